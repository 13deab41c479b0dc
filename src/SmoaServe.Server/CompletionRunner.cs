using System.Diagnostics;
using SmoaServe.Engine.Generation;
using SmoaServe.Engine.Hosting;
using SmoaServe.Engine.Scheduling;
using SmoaServe.Platform.Adapters;

namespace SmoaServe.Server;

/// <summary>A validated completion: prompt ids, the adapter (null = base) and the sampling of one request.</summary>
public sealed record CompletionJob(string RequestId, string Model, string? AdapterId, IReadOnlyList<int> PromptIds, SamplingParams Sampling, IReadOnlyList<string> Stop,
    ApiCaller? Caller = null);

/// <summary>How a completion ended, with its token counts.</summary>
public sealed record CompletionOutcome(string FinishReason, int PromptTokens, int CompletionTokens, TimeSpan Latency)
{
    public Usage Usage => new(PromptTokens, CompletionTokens);
}

/// <summary>
/// Runs completions on the engine's scheduler and turns their token streams into text: incremental decoding (never
/// splitting a character), stop strings, and the OpenAI finish reason. Client disconnect cancels the sequence.
/// </summary>
public sealed class CompletionRunner(EngineHost engine, AdapterService adapters, ServerStatus status, Microsoft.Extensions.Options.IOptions<ServerOptions> options,
    TenantLimiter limiter, ServerMetrics metrics)
{
    public EngineHost Engine { get; } = engine;
    public AdapterService Adapters { get; } = adapters;
    public ServerStatus Status { get; } = status;

    /// <summary>Checks the context length like vLLM and fills in the default max tokens (the rest of the context).</summary>
    /// <param name="caller">whose namespace <paramref name="modelId"/> is resolved in (null = the admin's)</param>
    public CompletionJob CreateJob(string requestId, string modelId, IReadOnlyList<int> promptIds, GenerationFields g, ApiCaller? caller = null)
    {
        if (promptIds.Count == 0) throw ApiException.BadRequest("The prompt is empty.", "prompt");
        int maxLen = Engine.MaxSequenceLength;
        int vocab = Engine.VocabSize;
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
            Temperature = g.Temperature, TopP = g.TopP, TopK = g.TopK, Seed = g.Seed, MaxTokens = maxTokens,
            StopTokenIds = g.IgnoreEos ? new HashSet<int>() : Engine.EosTokenIds,
        };
        return new CompletionJob(requestId, modelId, Adapters.Resolve(caller?.Scope ?? AdapterScope.Admin, modelId), promptIds, sampling, g.Stop, caller);
    }

    public async Task<CompletionOutcome> RunAsync(CompletionJob job, Func<string, ValueTask> onText, CancellationToken ct)
    {
        var started = Stopwatch.GetTimestamp();
        var tenant = job.Caller?.Tenant;
        if (tenant?.Quota.MaxConcurrentRequests is { } max)
        {
            if (!limiter.TryEnter(tenant.Id, max))
            {
                metrics.Routing.OnRejected(tenant.Name, "max_concurrent_requests");
                throw ApiException.TooManyRequests(
                    $"This tenant already has {max} requests in flight (limit max_concurrent_requests); retry later.", options.Value.RetryAfterSeconds);
            }
            try { return await RunStreamAsync(job, onText, started, ct); }
            finally { limiter.Exit(tenant.Id); }
        }
        return await RunStreamAsync(job, onText, started, ct);
    }

    private async Task<CompletionOutcome> RunStreamAsync(CompletionJob job, Func<string, ValueTask> onText, long started, CancellationToken ct)
    {
        var stream = Submit(job, ct);
        var decoder = Engine.Tokenizer.CreateStreamDecoder(skipSpecialTokens: true);
        var stops = new StopStringMatcher(job.Stop);
        int completionTokens = 0;
        await foreach (var output in stream.Outputs.ReadAllAsync(ct))
        {
            if (output.IsToken)
            {
                completionTokens++;
                if (Engine.EosTokenIds.Contains(output.Token)) continue;
                string text = stops.Push(decoder.Push(output.Token));
                if (text.Length > 0) await onText(text);
                if (stops.Stopped)
                {
                    stream.Cancel(); // frees the slot at the next step
                    return new CompletionOutcome("stop", job.PromptIds.Count, completionTokens, Stopwatch.GetElapsedTime(started));
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
                FinishReason.Error when job.AdapterId is not null && !Adapters.IsListed(job.AdapterId) => throw ApiException.ModelNotFound(job.Model),
                _ => throw new ApiException(500, "Generation failed: " + output.Error, "server_error"),
            };
            return new CompletionOutcome(finish, output.PromptTokens, output.CompletionTokens, Stopwatch.GetElapsedTime(started));
        }
        throw new ApiException(500, "The generation stream ended without a result.", "server_error");
    }

    private GenerationStream Submit(CompletionJob job, CancellationToken ct)
    {
        if (Status.Draining) throw ApiException.Unavailable("The server is shutting down.");
        try
        {
            return Engine.Scheduler.Submit(new GenerationRequest
            {
                PromptIds = job.PromptIds, AdapterId = job.AdapterId, Sampling = job.Sampling, CancellationToken = ct, RequestId = job.RequestId,
                Owner = job.Caller?.Owner,
            });
        }
        catch (QueueFullException e)
        {
            metrics.Routing.OnRejected(job.Caller?.MetricsLabel ?? "_admin", e.Limit);
            throw new ApiException(429, e.Message, "rate_limit_exceeded", null, e.Limit) { RetryAfterSeconds = options.Value.RetryAfterSeconds };
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
