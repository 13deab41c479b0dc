using System.Diagnostics;
using SmoaServe.Engine.Generation;
using SmoaServe.Engine.Hosting;
using SmoaServe.Engine.Scheduling;
using SmoaServe.Platform.Adapters;
using SmoaServe.Text.Structured;

namespace SmoaServe.Server;

/// <summary>A validated completion: prompt ids, the adapter (null = base), the sampling and the choices of one prompt.</summary>
/// <param name="Grammar">the output grammar (response_format, forced tool call) each choice follows; null = free text</param>
public sealed record CompletionJob(string RequestId, string Model, string? AdapterId, IReadOnlyList<int> PromptIds, SamplingParams Sampling, IReadOnlyList<string> Stop,
    ApiCaller? Caller = null)
{
    public int N { get; init; } = 1;
    public Grammar? Grammar { get; init; }
    /// <summary>Ids that end a choice without appearing in its text (EOS and the request's stop token ids).</summary>
    public IReadOnlySet<int> HiddenStopIds => Sampling.StopTokenIds;
}

/// <summary>How a completion ended, with its token counts.</summary>
public sealed record CompletionOutcome(string FinishReason, int PromptTokens, int CompletionTokens, TimeSpan Latency)
{
    public Usage Usage => new(PromptTokens, CompletionTokens);
}

/// <summary>A generated token with its logprobs (when asked for).</summary>
public readonly record struct GeneratedToken(int Id, PositionLogprobs? Logprobs);

/// <summary>
/// What one choice produced at one step: the text it released (may be empty while a stop string or a character is
/// incomplete) and the token that produced it (null for the final flush).
/// </summary>
public readonly record struct ChoicePiece(int Choice, string Text, GeneratedToken? Token);

/// <summary>
/// Runs completions on the engine's scheduler and turns their token streams into text: incremental decoding (never
/// splitting a character), stop strings, and the OpenAI finish reason. The n choices of a prompt are one prompt group
/// (prefilled once). Client disconnect cancels every sequence.
/// </summary>
public sealed class CompletionRunner(EngineHost engine, AdapterService adapters, ServerStatus status, Microsoft.Extensions.Options.IOptions<ServerOptions> options,
    TenantLimiter limiter, ServerMetrics metrics, OutputVocabulary vocabulary)
{
    public EngineHost Engine { get; } = engine;
    public AdapterService Adapters { get; } = adapters;
    public ServerStatus Status { get; } = status;
    public OutputVocabulary Vocabulary { get; } = vocabulary;

    /// <summary>Checks the context length like vLLM and fills in the default max tokens (the rest of the context).</summary>
    /// <param name="caller">whose namespace <paramref name="modelId"/> is resolved in (null = the admin's)</param>
    public CompletionJob CreateJob(string requestId, string modelId, IReadOnlyList<int> promptIds, GenerationFields g, ApiCaller? caller = null, Grammar? grammar = null)
    {
        if (promptIds.Count == 0) throw ApiException.BadRequest("The prompt is empty.", "prompt");
        int maxLen = Engine.MaxSequenceLength;
        int vocab = Engine.VocabSize;
        foreach (int id in promptIds)
            if (id >= vocab) throw ApiException.BadRequest($"Token id {id} is outside the vocabulary (size {vocab}).", "prompt");
        foreach (int id in g.LogitBias.Keys)
            if (id >= vocab) throw ApiException.BadRequest($"'logit_bias' token id {id} is outside the vocabulary (size {vocab}).", "logit_bias");
        foreach (int id in g.StopTokenIds)
            if (id >= vocab) throw ApiException.BadRequest($"Stop token id {id} is outside the vocabulary (size {vocab}).", "stop");
        int maxTokens = g.MaxTokens ?? maxLen - promptIds.Count;
        if ((long)promptIds.Count + Math.Max(maxTokens, 1) > maxLen)
            throw ApiException.BadRequest(
                $"This model's maximum context length is {maxLen} tokens. However, you requested {(long)promptIds.Count + maxTokens} tokens " +
                $"({promptIds.Count} in the prompt, {maxTokens} for the completion). Please reduce the length of the prompt or completion.",
                g.MaxTokens is null ? "messages" : "max_tokens", "context_length_exceeded");
        var stopIds = new HashSet<int>(g.IgnoreEos ? [] : Engine.EosTokenIds);
        stopIds.UnionWith(g.StopTokenIds);
        var sampling = new SamplingParams
        {
            Temperature = g.Temperature, TopP = g.TopP, TopK = g.TopK, Seed = g.Seed ?? CounterRng.NewSeed(), MaxTokens = maxTokens, StopTokenIds = stopIds,
            MinP = g.MinP, PresencePenalty = g.PresencePenalty, FrequencyPenalty = g.FrequencyPenalty, RepetitionPenalty = g.RepetitionPenalty,
            LogitBias = g.LogitBias, TopLogprobs = g.TopLogprobs,
        };
        try { sampling.Validate(vocab); }
        catch (ArgumentException e) { throw ApiException.BadRequest(e.Message); }
        return new CompletionJob(requestId, modelId, Adapters.Resolve(caller?.Scope ?? AdapterScope.Admin, modelId), promptIds, sampling, g.Stop, caller)
        {
            N = g.N, Grammar = grammar,
        };
    }

    /// <summary>One prompt, one choice, text only.</summary>
    public async Task<CompletionOutcome> RunAsync(CompletionJob job, Func<string, ValueTask> onText, CancellationToken ct) =>
        (await RunAsync([job with { N = 1 }], p => p.Text.Length > 0 ? onText(p.Text) : ValueTask.CompletedTask, ct))[0];

    /// <summary>
    /// Every choice of every job (choice index = job index × n + i), run together; <paramref name="onPiece"/> may be called
    /// from several choices at once. One tenant request whatever the number of choices.
    /// </summary>
    public async Task<CompletionOutcome[]> RunAsync(IReadOnlyList<CompletionJob> jobs, Func<ChoicePiece, ValueTask> onPiece, CancellationToken ct)
    {
        var started = Stopwatch.GetTimestamp();
        var tenant = jobs[0].Caller?.Tenant;
        if (tenant?.Quota.MaxConcurrentRequests is { } max)
        {
            if (!limiter.TryEnter(tenant.Id, max))
            {
                metrics.Routing.OnRejected(tenant.Name, "max_concurrent_requests");
                throw ApiException.TooManyRequests(
                    $"This tenant already has {max} requests in flight (limit max_concurrent_requests); retry later.", options.Value.RetryAfterSeconds);
            }
            try { return await RunChoicesAsync(jobs, onPiece, started, ct); }
            finally { limiter.Exit(tenant.Id); }
        }
        return await RunChoicesAsync(jobs, onPiece, started, ct);
    }

    private async Task<CompletionOutcome[]> RunChoicesAsync(IReadOnlyList<CompletionJob> jobs, Func<ChoicePiece, ValueTask> onPiece, long started, CancellationToken ct)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var streams = new List<(CompletionJob Job, int Index, GenerationStream Stream)>();
        try
        {
            int index = 0;
            foreach (var job in jobs)
            {
                var group = job.N > 1 ? new PromptGroup() : null;
                for (int i = 0; i < job.N; i++, index++)
                    streams.Add((job, index, Submit(job, i, group, cts.Token)));
            }
        }
        catch
        {
            cts.Cancel(); // the choices already queued leave at the next step
            throw;
        }
        var tasks = streams.Select(s => ConsumeAsync(s.Job, s.Index, s.Stream, onPiece, started, cts)).ToArray();
        try { return await Task.WhenAll(tasks); }
        catch
        {
            cts.Cancel();
            // the first failure in choice order (a client disconnect stays a cancellation)
            foreach (var t in tasks)
                if (t.IsFaulted && t.Exception!.InnerException is { } e && (e is not OperationCanceledException || ct.IsCancellationRequested))
                    System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e).Throw();
            throw;
        }
    }

    private async Task<CompletionOutcome> ConsumeAsync(CompletionJob job, int choice, GenerationStream stream, Func<ChoicePiece, ValueTask> onPiece, long started,
        CancellationTokenSource cts)
    {
        await Task.Yield();
        var ct = cts.Token;
        var decoder = Engine.Tokenizer.CreateStreamDecoder(skipSpecialTokens: true);
        var stops = new StopStringMatcher(job.Stop);
        int completionTokens = 0;
        await foreach (var output in stream.Outputs.ReadAllAsync(ct))
        {
            if (output.IsToken)
            {
                completionTokens++;
                if (job.HiddenStopIds.Contains(output.Token) || Engine.EosTokenIds.Contains(output.Token)) continue;
                string text = stops.Push(decoder.Push(output.Token));
                await onPiece(new ChoicePiece(choice, text, new GeneratedToken(output.Token, output.Logprobs)));
                if (stops.Stopped)
                {
                    stream.Cancel(); // frees the slot at the next step
                    return new CompletionOutcome("stop", job.PromptIds.Count, completionTokens, Stopwatch.GetElapsedTime(started));
                }
                continue;
            }
            string tail = stops.Push(decoder.Flush());
            tail += stops.Flush();
            if (tail.Length > 0) await onPiece(new ChoicePiece(choice, tail, null));
            string finish = output.Finish switch
            {
                FinishReason.Length when !stops.Stopped => "length",
                FinishReason.Stop or FinishReason.Length => "stop",
                FinishReason.Cancelled when cts.IsCancellationRequested => throw new OperationCanceledException(ct),
                FinishReason.Cancelled => throw ApiException.Unavailable("The server is shutting down; the request was cancelled."),
                // the adapter was removed while the request waited or ran: the model no longer exists
                FinishReason.Error when job.AdapterId is not null && !Adapters.IsListed(job.AdapterId) => throw ApiException.ModelNotFound(job.Model),
                _ => throw new ApiException(500, "Generation failed: " + output.Error, "server_error"),
            };
            return new CompletionOutcome(finish, output.PromptTokens, output.CompletionTokens, Stopwatch.GetElapsedTime(started));
        }
        throw new ApiException(500, "The generation stream ended without a result.", "server_error");
    }

    private GenerationStream Submit(CompletionJob job, int choiceIndex, PromptGroup? group, CancellationToken ct)
    {
        if (Status.Draining) throw ApiException.Unavailable("The server is shutting down.");
        try
        {
            return Engine.Scheduler.Submit(new GenerationRequest
            {
                PromptIds = job.PromptIds, AdapterId = job.AdapterId, Sampling = job.Sampling, CancellationToken = ct, RequestId = job.RequestId,
                Owner = job.Caller?.Owner, ChoiceIndex = choiceIndex, Group = group,
                Grammar = job.Grammar is { } g ? new GrammarMatcher(g, Vocabulary.Vocabulary) : null,
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
