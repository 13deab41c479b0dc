using System.Diagnostics;
using StopStringMatcher = SmoaServe.Engine.Generation.StopStringMatcher;
using SmoaServe.Engine.Scheduling;

namespace SmoaServe.Server;

/// <summary>A validated generation: prompt ids, the adapter (null = base) and the sampling of one request.</summary>
public sealed record GenerationJob(string RequestId, string Model, string? AdapterId, IReadOnlyList<int> PromptIds, SamplingParams Sampling, IReadOnlyList<string> Stop);

public sealed record GenerationResult(string FinishReason, int PromptTokens, int CompletionTokens, TimeSpan Latency)
{
    public Usage Usage => new(PromptTokens, CompletionTokens);
}

/// <summary>
/// Runs a job on the scheduler and turns its token stream into text: incremental decoding (never splitting a
/// character), stop strings, and the OpenAI finish reason. Client disconnect cancels the sequence.
/// </summary>
public static class Generation
{
    /// <summary>Checks the context length like vLLM and fills in the default max tokens (the rest of the context).</summary>
    public static GenerationJob CreateJob(ServingModel model, string requestId, string modelId, IReadOnlyList<int> promptIds,
        GenerationFields g)
    {
        if (promptIds.Count == 0) throw ApiException.BadRequest("The prompt is empty.", "prompt");
        int maxLen = model.MaxModelLength;
        int vocab = model.Scheduler.VocabSize;
        foreach (int id in promptIds)
            if (id >= vocab) throw ApiException.BadRequest($"Token id {id} is outside the vocabulary (size {vocab}).", "prompt");
        int maxTokens = g.MaxTokens ?? maxLen - promptIds.Count;
        if ((long)promptIds.Count + Math.Max(maxTokens, 1) > maxLen)
            throw ApiException.BadRequest(
                $"This model's maximum context length is {maxLen} tokens. However, you requested {(long)promptIds.Count + maxTokens} tokens " +
                $"({promptIds.Count} in the prompt, {maxTokens} for the completion). Please reduce the length of the prompt or completion.",
                g.MaxTokens is null ? "messages" : "max_tokens", "context_length_exceeded");
        var sampling = new SamplingParams
        {
            Temperature = g.Temperature, TopP = g.TopP, TopK = g.TopK, Seed = g.Seed, MaxTokens = maxTokens, StopTokenIds = g.IgnoreEos ? new HashSet<int>() : model.EosTokenIds,
        };
        return new GenerationJob(requestId, modelId, model.ResolveAdapter(modelId), promptIds, sampling, g.Stop);
    }

    public static async Task<GenerationResult> RunAsync(ServingModel model, GenerationJob job, Func<string, ValueTask> onText,
        CancellationToken ct)
    {
        var started = Stopwatch.GetTimestamp();
        var stream = Submit(model, job, ct);
        var decoder = model.Tokenizer.CreateStreamDecoder(skipSpecialTokens: true);
        var stops = new StopStringMatcher(job.Stop);
        int completionTokens = 0;
        await foreach (var output in stream.Outputs.ReadAllAsync(ct))
        {
            if (output.IsToken)
            {
                completionTokens++;
                if (model.EosTokenIds.Contains(output.Token)) continue;
                string text = stops.Push(decoder.Push(output.Token));
                if (text.Length > 0) await onText(text);
                if (stops.Stopped)
                {
                    stream.Cancel(); // frees the slot at the next step
                    return new GenerationResult("stop", job.PromptIds.Count, completionTokens, Stopwatch.GetElapsedTime(started));
                }
                continue;
            }
            string tail = stops.Push(decoder.Flush());
            tail += stops.Flush();
            if (tail.Length > 0) await onText(tail);
            string finish = output.Finish switch
            {
                FinishReason.Length when !stops.Stopped => "length",
                FinishReason.Stop or FinishReason.Length => "stop",
                FinishReason.Cancelled when ct.IsCancellationRequested => throw new OperationCanceledException(ct),
                FinishReason.Cancelled => throw ApiException.Unavailable("The server is shutting down; the request was cancelled."),
                // the adapter was removed while the request waited or ran: the model no longer exists
                FinishReason.Error when job.AdapterId is not null && !model.TryGetAdapter(job.AdapterId, out _) => throw ApiException.ModelNotFound(job.Model),
                _ => throw new ApiException(500, "Generation failed: " + output.Error, "server_error"),
            };
            return new GenerationResult(finish, output.PromptTokens, output.CompletionTokens, Stopwatch.GetElapsedTime(started));
        }
        throw new ApiException(500, "The generation stream ended without a result.", "server_error");
    }

    private static GenerationStream Submit(ServingModel model, GenerationJob job, CancellationToken ct)
    {
        if (model.Draining) throw ApiException.Unavailable("The server is shutting down.");
        try
        {
            return model.Scheduler.Submit(new GenerationRequest
            {
                PromptIds = job.PromptIds, AdapterId = job.AdapterId, Sampling = job.Sampling, CancellationToken = ct, RequestId = job.RequestId,
            });
        }
        catch (QueueFullException e)
        {
            throw ApiException.TooManyRequests(e.Message, model.RetryAfterSeconds);
        }
        catch (ArgumentException e)
        {
            throw ApiException.BadRequest(e.Message, "prompt");
        }
        catch (InvalidOperationException e)
        {
            throw ApiException.Unavailable(e.Message);
        }
    }
}
