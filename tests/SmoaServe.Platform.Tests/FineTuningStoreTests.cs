using Microsoft.Data.Sqlite;
using SmoaServe.Platform.FineTuning;
using SmoaServe.Platform.Storage;

namespace SmoaServe.Platform.Tests;

/// <summary>Files and fine-tuning jobs in the SQLite store: what is written is read back after a reopen, lists page newest first.</summary>
public sealed class FineTuningStoreTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "smoa-ft-store-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        SqliteConnection.ClearAllPools();
        if (Directory.Exists(_dir)) Directory.Delete(_dir, true);
    }

    private static FineTuningJob Job(string id, string owner, string status) => new()
    {
        Id = id, Owner = owner, Model = "base", TrainingFile = "file-a", ValidationFile = "file-b", Suffix = "s", Seed = 7,
        Metadata = "{\"k\":\"v\"}", Method = "smoa", Status = status, CreatedAt = DateTimeOffset.FromUnixTimeSeconds(1_700_000_000),
        Hyperparameters = new FineTuneHyperparameters { NEpochs = 3, BatchSize = 8, LearningRate = 2e-3, R = 8, NumBlocks = 2, LoraAlpha = 16, TargetModules = ["q_proj"] },
    };

    [Fact]
    public void Jobs_events_and_files_survive_a_reopen_and_page_newest_first()
    {
        string path = Path.Combine(_dir, "smoa.db");
        using (var store = new SqlitePlatformStore(path))
        {
            for (int i = 0; i < 5; i++) store.AddJob(Job($"ftjob-{i}", i % 2 == 0 ? "t1" : "", i < 2 ? JobStatus.Queued : JobStatus.Running));
            store.UpdateJob(Job("ftjob-1", "", JobStatus.Failed) with { Error = new JobError("invalid_training_file", "line 3", "training_file"), TrainedTokens = 42 });
            for (int i = 0; i < 3; i++) store.AddEvent(new JobEvent($"ftevent-{i}", "ftjob-0", DateTimeOffset.UtcNow, "info", i == 1 ? "metrics" : "message", $"m{i}", i == 1 ? "{\"step\":1}" : null));
            store.AddFile(new StoredFile("file-a", "t1", "a.jsonl", "fine-tune", 10, DateTimeOffset.UtcNow, "/p/a"));
        }
        using var again = new SqlitePlatformStore(path);
        var failed = again.GetJob("ftjob-1")!;
        Assert.Equal(JobStatus.Failed, failed.Status);
        Assert.Equal(new JobError("invalid_training_file", "line 3", "training_file"), failed.Error);
        Assert.Equal(42, failed.TrainedTokens);
        Assert.Equal(["q_proj"], failed.Hyperparameters.TargetModules);
        Assert.Equal(2, failed.Hyperparameters.NumBlocks);

        var page = again.ListJobs(null, null, 2);
        Assert.Equal(["ftjob-4", "ftjob-3"], page.Items.Select(j => j.Id));
        Assert.True(page.HasMore);
        var rest = again.ListJobs(null, "ftjob-3", 10);
        Assert.Equal(["ftjob-2", "ftjob-1", "ftjob-0"], rest.Items.Select(j => j.Id));
        Assert.False(rest.HasMore);
        Assert.Equal(["ftjob-4", "ftjob-2", "ftjob-0"], again.ListJobs("t1", null, 10).Items.Select(j => j.Id));
        Assert.Equal(["ftjob-2", "ftjob-3", "ftjob-4"], again.JobsIn(JobStatus.Running).Select(j => j.Id));   // oldest first
        Assert.Equal(4, again.ActiveJobsUsing("file-a"));   // every job but the failed one
        Assert.Equal(0, again.ActiveJobsUsing("file-z"));
        Assert.Equal(["ftevent-2", "ftevent-1"], again.ListEvents("ftjob-0", null, 2).Items.Select(e => e.Id));
        Assert.Equal("{\"step\":1}", again.AllEvents("ftjob-0")[1].Data);
        Assert.Equal("a.jsonl", again.GetFile("file-a")!.Filename);
        Assert.True(again.RemoveFile("file-a"));
        Assert.Null(again.GetFile("file-a"));
    }

    [Fact]
    public void Reconcile_deletes_files_without_a_row_and_partial_uploads_only_from_before_the_start()
    {
        var files = new TrainingFileStore(_dir);
        string temp = files.CreateTemp();
        File.WriteAllText(temp, "{}");
        string kept = files.Commit(temp, "file-kept");
        string orphan = files.PathOf("file-orphan");
        File.WriteAllText(orphan, "x");
        string partial = files.CreateTemp();
        File.WriteAllText(partial, "half");
        File.SetLastWriteTimeUtc(orphan, DateTime.UtcNow.AddHours(-1));
        File.SetLastWriteTimeUtc(partial, DateTime.UtcNow.AddHours(-1));
        string current = files.CreateTemp();
        File.WriteAllText(current, "being written now");

        files.Reconcile([kept], DateTime.UtcNow.AddMinutes(-1));
        Assert.True(File.Exists(kept));
        Assert.False(File.Exists(orphan));
        Assert.False(File.Exists(partial));
        Assert.True(File.Exists(current));
        Assert.False(File.Exists(temp));
    }
}
