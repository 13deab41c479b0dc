using System.Collections.Concurrent;
using System.Text.Json;
using SmoaServe.Platform.Storage;

namespace SmoaServe.Platform.FineTuning;

/// <summary>A request the service refuses; <see cref="Param"/> names the field at fault, <see cref="Status"/> the HTTP status.</summary>
public sealed class FineTuningRequestException(string message, string? param, int status = 400, string? code = null) : Exception(message)
{
    public string? Param { get; } = param;
    public int Status { get; } = status;
    public string? Code { get; } = code;
}

/// <summary>
/// Files and fine-tuning jobs: the bookkeeping the API and the worker share. Every change of a job is written to the
/// store at once (a restart finds it as it was); the worker is woken when a job is created, and a running job's
/// cancellation is signalled through <see cref="CancellationOf"/>. Job mutations are serialised by one lock, so a
/// cancel and the worker's own status changes never overwrite each other.
/// </summary>
public sealed class FineTuningService(IFineTuningStore store, TrainingFileStore files, IPlatformStore platform)
{
    public const string FilePurpose = "fine-tune";
    private readonly object _jobLock = new();
    private readonly SemaphoreSlim _wake = new(0, int.MaxValue);
    private readonly ConcurrentDictionary<string, CancellationTokenSource> _cancellations = new();

    public IFineTuningStore Store { get; } = store;
    public TrainingFileStore Files { get; } = files;

    // ---- files ----

    /// <summary>Stores a written temporary file (from <see cref="TrainingFileStore.CreateTemp"/>, consumed) as a new file.</summary>
    public StoredFile AddFile(string owner, string filename, string purpose, string temp)
    {
        try
        {
            if (purpose != FilePurpose) throw new FineTuningRequestException($"'purpose' must be \"{FilePurpose}\".", "purpose");
            string id = FineTuningIds.New("file");
            long bytes = new FileInfo(temp).Length;
            string path = Files.Commit(temp, id);
            var file = new StoredFile(id, owner, filename, purpose, bytes, Now(), path);
            try { Store.AddFile(file); }
            catch { Files.Delete(path); throw; }
            return file;
        }
        finally { Files.Discard(temp); }
    }

    /// <summary>A file the caller may use: its own, or any for the admin (null otherwise).</summary>
    public StoredFile? GetFile(string owner, bool isAdmin, string id)
    {
        var f = Store.GetFile(id);
        return f is not null && (isAdmin || f.Owner == owner) ? f : null;
    }

    public Page<StoredFile> ListFiles(string owner, bool isAdmin, string? after, int limit) => Store.ListFiles(isAdmin ? null : owner, after, limit);

    /// <summary>Deletes a file (row, then data). Refused while a job that has not finished names it.</summary>
    public bool DeleteFile(string owner, bool isAdmin, string id)
    {
        var f = GetFile(owner, isAdmin, id);
        if (f is null) return false;
        if (Store.ActiveJobsUsing(id) > 0) throw new FineTuningRequestException($"The file '{id}' is used by a fine-tuning job that has not finished.", "file_id", 409, "file_in_use");
        if (!Store.RemoveFile(id)) return false;
        Files.Delete(f.Path);
        return true;
    }

    // ---- jobs ----

    /// <summary>
    /// Creates a job in status validating_files after checking what can be checked at once: the model is the base, the
    /// files exist and may be used for the target namespace, the tenant exists. The files' lines are validated by the worker.
    /// </summary>
    /// <param name="tenant">a tenant name or id; null: the admin namespace</param>
    public FineTuningJob CreateJob(FineTuningJob draft, string baseModelId, string? tenant)
    {
        if (draft.Model != baseModelId)
            throw new FineTuningRequestException($"'model' must be the base model '{baseModelId}' (adapters are trained on the served base).", "model", 400, "model_not_available");
        string owner = "";
        if (tenant is not null)
            owner = (platform.FindTenantByName(tenant) ?? platform.GetTenant(tenant))?.Id
                    ?? throw new FineTuningRequestException($"The tenant '{tenant}' does not exist.", "tenant", 400, "tenant_not_found");
        CheckFile(draft.TrainingFile, "training_file", owner);
        if (draft.ValidationFile is { } v) CheckFile(v, "validation_file", owner);
        var job = draft with { Id = FineTuningIds.New("ftjob"), Owner = owner, Status = JobStatus.ValidatingFiles, CreatedAt = Now() };
        Store.AddJob(job);
        AddMessage(job.Id, "info", $"Created fine-tuning job: {job.Id}");
        _wake.Release();
        return job;
    }

    private void CheckFile(string id, string param, string owner)
    {
        var f = Store.GetFile(id) ?? throw new FineTuningRequestException($"The file '{id}' does not exist.", param, 400, "file_not_found");
        if (f.Owner.Length > 0 && f.Owner != owner)
            throw new FineTuningRequestException($"The file '{id}' belongs to another tenant.", param, 400, "file_not_found");
        if (f.Purpose != FilePurpose) throw new FineTuningRequestException($"The file '{id}' has purpose '{f.Purpose}', not '{FilePurpose}'.", param);
    }

    public FineTuningJob? GetJob(string owner, bool isAdmin, string id)
    {
        var j = Store.GetJob(id);
        return j is not null && (isAdmin || j.Owner == owner) ? j : null;
    }

    public Page<FineTuningJob> ListJobs(string owner, bool isAdmin, string? after, int limit) => Store.ListJobs(isAdmin ? null : owner, after, limit);

    /// <summary>
    /// Cancels a job: one that has not started is cancelled at once; a running one is signalled and stops after its
    /// current step (its status turns cancelled then). A finished job is left as it is (the caller answers 400).
    /// </summary>
    public FineTuningJob Cancel(FineTuningJob job)
    {
        lock (_jobLock)
        {
            var current = Store.GetJob(job.Id) ?? job;
            if (JobStatus.IsFinal(current.Status))
                throw new FineTuningRequestException($"The job '{job.Id}' has already {current.Status}.", "fine_tuning_job_id", 400, "job_finished");
            if (current.Status == JobStatus.Running && _cancellations.TryGetValue(job.Id, out var cts))
            {
                cts.Cancel();
                AddMessage(job.Id, "info", "Cancellation requested; the job stops after its current step.");
                return current;
            }
            var cancelled = current with { Status = JobStatus.Cancelled, FinishedAt = Now(), EstimatedFinish = null };
            Store.UpdateJob(cancelled);
            AddMessage(job.Id, "info", "The job was cancelled.");
            return cancelled;
        }
    }

    // ---- for the worker ----

    /// <summary>Waits until a job may have been created (or <paramref name="timeout"/> passed).</summary>
    public Task WaitForWorkAsync(TimeSpan timeout, CancellationToken ct) => _wake.WaitAsync(timeout, ct);

    /// <summary>Applies <paramref name="change"/> to the job's stored state unless it was cancelled or finished meanwhile; returns the new state (null when not applied).</summary>
    public FineTuningJob? Update(string id, Func<FineTuningJob, FineTuningJob> change, bool evenIfFinal = false)
    {
        lock (_jobLock)
        {
            var current = Store.GetJob(id);
            if (current is null || (!evenIfFinal && JobStatus.IsFinal(current.Status))) return null;
            var next = change(current);
            Store.UpdateJob(next);
            return next;
        }
    }

    /// <summary>A token cancelled when the job is cancelled through the API (while it runs).</summary>
    public CancellationToken CancellationOf(string jobId) => _cancellations.GetOrAdd(jobId, _ => new CancellationTokenSource()).Token;

    public void ReleaseCancellation(string jobId)
    {
        if (_cancellations.TryRemove(jobId, out var cts)) cts.Dispose();
    }

    public void AddMessage(string jobId, string level, string message) =>
        Store.AddEvent(new JobEvent(FineTuningIds.New("ftevent"), jobId, Now(), level, "message", message, null));

    public void AddMetrics(string jobId, string message, object data) =>
        Store.AddEvent(new JobEvent(FineTuningIds.New("ftevent"), jobId, Now(), "info", "metrics", message, JsonSerializer.Serialize(data)));

    private static DateTimeOffset Now() => DateTimeOffset.FromUnixTimeSeconds(DateTimeOffset.UtcNow.ToUnixTimeSeconds());
}
