using System.Security.Cryptography;

namespace SmoaServe.Platform.FineTuning;

/// <summary>An uploaded file (purpose "fine-tune": chat JSONL), stored under the data directory; <paramref name="Owner"/> is a tenant id or "" (admin).</summary>
public sealed record StoredFile(string Id, string Owner, string Filename, string Purpose, long Bytes, DateTimeOffset CreatedAt, string Path);

/// <summary>The statuses of a fine-tuning job, as the API spells them: validating_files → queued → running → succeeded | failed | cancelled.</summary>
public static class JobStatus
{
    public const string ValidatingFiles = "validating_files", Queued = "queued", Running = "running",
        Succeeded = "succeeded", Failed = "failed", Cancelled = "cancelled";

    public static bool IsFinal(string status) => status is Succeeded or Failed or Cancelled;
}

/// <summary>Why a job failed: a machine-readable code, a message, and the request parameter at fault (if one is).</summary>
public sealed record JobError(string Code, string Message, string? Param = null);

/// <summary>A job's hyperparameters with every "auto" resolved (what the trainer runs with).</summary>
public sealed record FineTuneHyperparameters
{
    public int NEpochs { get; init; }
    public int BatchSize { get; init; }
    public double LearningRate { get; init; }
    public double? LearningRateMultiplier { get; init; }
    public int R { get; init; }
    /// <summary>SMoA blocks K (1 = HiRA); null for LoRA.</summary>
    public int? NumBlocks { get; init; }
    public double LoraAlpha { get; init; }
    public IReadOnlyList<string> TargetModules { get; init; } = [];
    public double WarmupRatio { get; init; }
    public double WeightDecay { get; init; }
    public double MaxGradNorm { get; init; } = 1.0;
}

/// <summary>One fine-tuning job and its progress. Jobs are rows of the platform store; every change is written through.</summary>
public sealed record FineTuningJob
{
    public required string Id { get; init; }
    /// <summary>The namespace the trained adapter goes to: a tenant id, or "" (admin).</summary>
    public required string Owner { get; init; }
    public required string Model { get; init; }
    public required string TrainingFile { get; init; }
    public string? ValidationFile { get; init; }
    public string? Suffix { get; init; }
    public long Seed { get; init; }
    /// <summary>The caller's metadata object as JSON (at most 16 string pairs), or null.</summary>
    public string? Metadata { get; init; }
    /// <summary>"smoa" or "lora".</summary>
    public required string Method { get; init; }
    public required FineTuneHyperparameters Hyperparameters { get; init; }
    public string Status { get; init; } = JobStatus.ValidatingFiles;
    public DateTimeOffset CreatedAt { get; init; }
    public DateTimeOffset? FinishedAt { get; init; }
    /// <summary>The trained adapter's name in the owner's namespace, once the job succeeded.</summary>
    public string? FineTunedModel { get; init; }
    public long TrainedTokens { get; init; }
    public JobError? Error { get; init; }
    public DateTimeOffset? EstimatedFinish { get; init; }
    public int CompletedSteps { get; init; }
    public int TotalSteps { get; init; }
}

/// <summary>A job event: "message" (level info / warn / error) or "metrics" (<see cref="Data"/> holds step, train_loss, ...).</summary>
public sealed record JobEvent(string Id, string JobId, DateTimeOffset CreatedAt, string Level, string Type, string Message, string? Data);

/// <summary>A saved training state of a job (the adapter's factors, the optimizer's moments and the step), resumable after a restart.</summary>
public sealed record JobCheckpoint(string Id, string JobId, DateTimeOffset CreatedAt, int Step, string Metrics);

/// <summary>A page of a list, newest first: the items, and whether more follow the last one.</summary>
public sealed record Page<T>(IReadOnlyList<T> Items, bool HasMore);

public static class FineTuningIds
{
    /// <summary>A new id: the prefix and 24 random hex digits (file-, ftjob-, ftevent-, ftckpt-).</summary>
    public static string New(string prefix) => prefix + "-" + Convert.ToHexString(RandomNumberGenerator.GetBytes(12)).ToLowerInvariant();

    /// <summary>Ids as this server makes them (also a safe file name).</summary>
    public static bool IsWellFormed(string? id, string prefix) =>
        id is not null && id.Length == prefix.Length + 25 && id.StartsWith(prefix + "-", StringComparison.Ordinal)
        && id.AsSpan(prefix.Length + 1).IndexOfAnyExcept("0123456789abcdef") < 0;
}

/// <summary>The persistent side of files and fine-tuning jobs (the SQLite platform store implements it).</summary>
public interface IFineTuningStore
{
    void AddFile(StoredFile file);
    StoredFile? GetFile(string id);
    /// <summary>Files newest first; of one owner, or all when null.</summary>
    Page<StoredFile> ListFiles(string? owner, string? after, int limit);
    bool RemoveFile(string id);
    /// <summary>Jobs (not finished) that name the file.</summary>
    int ActiveJobsUsing(string fileId);

    void AddJob(FineTuningJob job);
    FineTuningJob? GetJob(string id);
    /// <summary>Writes every mutable field of the job.</summary>
    void UpdateJob(FineTuningJob job);
    /// <summary>Jobs newest first; of one owner, or all when null.</summary>
    Page<FineTuningJob> ListJobs(string? owner, string? after, int limit);
    /// <summary>Jobs in one of these statuses, oldest first.</summary>
    IReadOnlyList<FineTuningJob> JobsIn(params string[] statuses);

    void AddEvent(JobEvent e);
    Page<JobEvent> ListEvents(string jobId, string? after, int limit);
    /// <summary>Every event of a job, oldest first.</summary>
    IReadOnlyList<JobEvent> AllEvents(string jobId);

    void AddCheckpoint(JobCheckpoint c);
    Page<JobCheckpoint> ListCheckpoints(string jobId, string? after, int limit);
}
