using SmoaServe.Engine.Generation;
using SmoaServe.Text.Structured;

namespace SmoaServe.Engine.Scheduling;

/// <summary>Limits of the continuous-batching scheduler.</summary>
public sealed class SchedulerOptions
{
    /// <summary>Most sequences in the running batch (each holds a KV slot); null or larger than the runner's slots = all slots.</summary>
    public int? MaxRunning { get; set; }
    /// <summary>Token budget of one step: one per decoding row plus the prefill chunks.</summary>
    public int MaxBatchedTokens { get; set; } = 256;
    /// <summary>Longest prefill chunk of one prompt in one step.</summary>
    public int MaxPrefillChunk { get; set; } = 128;
    /// <summary>Requests waiting for a slot; one more is rejected (<see cref="QueueFullException"/>).</summary>
    public int MaxQueued { get; set; } = 256;
    /// <summary>Requests one owner (tenant) may have waiting; null = only <see cref="MaxQueued"/> applies.</summary>
    public int? MaxQueuedPerOwner { get; set; }
    /// <summary>
    /// Fair sharing: while several owners have work, each is entitled to an equal share of the running batch; a request of
    /// an owner below its share takes the slot of the newest row of the owner furthest above it (that row is preempted and
    /// resumes later by recomputing its context). Off: first come, first served.
    /// </summary>
    public bool FairShare { get; set; } = true;

    public void Validate()
    {
        if (MaxRunning is < 1) throw new ArgumentException($"MaxRunning must be >= 1 (got {MaxRunning})");
        if (MaxBatchedTokens < 1) throw new ArgumentException($"MaxBatchedTokens must be >= 1 (got {MaxBatchedTokens})");
        if (MaxPrefillChunk < 1) throw new ArgumentException($"MaxPrefillChunk must be >= 1 (got {MaxPrefillChunk})");
        if (MaxQueued < 0) throw new ArgumentException($"MaxQueued must be >= 0 (got {MaxQueued})");
        if (MaxQueuedPerOwner is < 0) throw new ArgumentException($"MaxQueuedPerOwner must be >= 0 (got {MaxQueuedPerOwner})");
    }
}

public sealed class GenerationRequest
{
    public required IReadOnlyList<int> PromptIds { get; init; }
    /// <summary>null = base model.</summary>
    public string? AdapterId { get; init; }
    public required SamplingParams Sampling { get; init; }
    /// <summary>Cancelling (e.g. client disconnect) stops the sequence at the next step and frees its KV slot.</summary>
    public CancellationToken CancellationToken { get; init; }
    public string? RequestId { get; init; }
    /// <summary>Who the request is for (a tenant id; null = the admin / anonymous): the unit of fair sharing.</summary>
    public string? Owner { get; init; }
    /// <summary>Which choice of its request this sequence is: it samples with seed + index (<see cref="CounterRng.RowSeed"/>).</summary>
    public int ChoiceIndex { get; init; }
    /// <summary>Constrains the output (response_format, forced tool calls); one per sequence. Null: free text.</summary>
    public GrammarMatcher? Grammar { get; init; }
    /// <summary>
    /// Sequences of one group share the same prompt and adapter (the n choices of a request): the prompt is prefilled
    /// once and its KV entries copied to the other rows' slots. Null: on its own.
    /// </summary>
    public PromptGroup? Group { get; init; }
}

/// <summary>Sequences with one prompt and adapter whose prompt is prefilled once (see <see cref="GenerationRequest.Group"/>).</summary>
public sealed class PromptGroup
{
    /// <summary>Accessed on the model thread only: the sequence whose slot holds the prompt, and the prompt's last logits.</summary>
    internal object? Holder;
    internal float[]? PromptLogits;
    /// <summary>Rows that took the prompt's KV entries by copy instead of prefilling it.</summary>
    public int Copies => Volatile.Read(ref _copies);
    internal int _copies;
}

public enum FinishReason { Stop, Length, Cancelled, Error }

/// <summary>
/// One item of a request's output stream: a generated token (<see cref="Token"/> ≥ 0), or the end
/// (<see cref="Finish"/> set, with the final counts). The end is always the last item.
/// </summary>
public readonly record struct GenerationOutput(int Token, FinishReason? Finish, int PromptTokens, int CompletionTokens, string? Error)
{
    /// <summary>The token's log-probability and alternatives, when the sampling asks for them.</summary>
    public PositionLogprobs? Logprobs { get; init; }
    public static GenerationOutput ForToken(int token, PositionLogprobs? logprobs = null) => new(token, null, 0, 0, null) { Logprobs = logprobs };
    public bool IsToken => Finish is null;
}

/// <summary>The queue is full: try again later (HTTP 429). <see cref="Limit"/> names the limit that was hit.</summary>
public sealed class QueueFullException : Exception
{
    public QueueFullException(int maxQueued) : this(maxQueued, "max_queued", $"the request queue is full ({maxQueued} waiting); retry later") { }

    public QueueFullException(int maxQueued, string limit, string message) : base(message)
    {
        MaxQueued = maxQueued;
        Limit = limit;
    }

    public int MaxQueued { get; }
    public string Limit { get; }
}

/// <summary>Metric hooks, called on the model thread; keep them cheap.</summary>
public interface ISchedulerMetrics
{
    /// <summary>After every step (and when idle): running batch size and queue depth.</summary>
    void OnStep(int running, int queued, int decodeRows, int prefillTokens);
    void OnFirstToken(TimeSpan timeToFirstToken);
    void OnInterToken(TimeSpan interTokenLatency);
    void OnFinished(FinishReason reason, int promptTokens, int completionTokens);
}
