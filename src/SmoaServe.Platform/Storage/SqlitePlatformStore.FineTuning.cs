using System.Text.Json;
using Microsoft.Data.Sqlite;
using SmoaServe.Platform.FineTuning;

namespace SmoaServe.Platform.Storage;

/// <summary>Files and fine-tuning jobs in the platform database (schema version 2). A job is kept as one JSON document
/// beside the columns lists filter on.</summary>
public sealed partial class SqlitePlatformStore
{
    private static readonly JsonSerializerOptions JobJson = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    // ---- files ----

    public void AddFile(StoredFile f) => Run(c => Execute(c,
        "INSERT INTO files (id, owner, filename, purpose, bytes, created_at, path) VALUES ($id, $o, $f, $p, $b, $t, $path)", null,
        ("$id", f.Id), ("$o", f.Owner), ("$f", f.Filename), ("$p", f.Purpose), ("$b", f.Bytes), ("$t", f.CreatedAt.ToUnixTimeSeconds()), ("$path", f.Path)));

    public StoredFile? GetFile(string id) => Run(c => Files(c, "SELECT * FROM files WHERE id = $v", ("$v", id)).FirstOrDefault());

    public Page<StoredFile> ListFiles(string? owner, string? after, int limit) => Run(c =>
        PageOf(Files(c, $"SELECT * FROM files WHERE {OwnerAndAfter("files", owner)} ORDER BY seq DESC LIMIT $limit",
            ("$o", owner), ("$after", after), ("$limit", limit + 1)), limit));

    public bool RemoveFile(string id) => Run(c => Execute(c, "DELETE FROM files WHERE id = $id", null, ("$id", id)) > 0);

    public int ActiveJobsUsing(string fileId) => Run(c => JobsWhere(c, "status NOT IN ('succeeded', 'failed', 'cancelled')")
        .Count(j => j.TrainingFile == fileId || j.ValidationFile == fileId));

    // ---- jobs ----

    public void AddJob(FineTuningJob job) => Run(c => Execute(c,
        "INSERT INTO fine_tuning_jobs (id, owner, status, created_at, job) VALUES ($id, $o, $s, $t, $j)", null,
        ("$id", job.Id), ("$o", job.Owner), ("$s", job.Status), ("$t", job.CreatedAt.ToUnixTimeSeconds()), ("$j", JsonSerializer.Serialize(job, JobJson))));

    public FineTuningJob? GetJob(string id) => Run(c => JobsWhere(c, "id = $v", ("$v", id)).FirstOrDefault());

    public void UpdateJob(FineTuningJob job) => Run(c => Execute(c, "UPDATE fine_tuning_jobs SET status = $s, job = $j WHERE id = $id", null,
        ("$id", job.Id), ("$s", job.Status), ("$j", JsonSerializer.Serialize(job, JobJson))));

    public Page<FineTuningJob> ListJobs(string? owner, string? after, int limit) => Run(c =>
        PageOf(JobsWhere(c, $"{OwnerAndAfter("fine_tuning_jobs", owner)} ORDER BY seq DESC LIMIT $limit", ("$o", owner), ("$after", after), ("$limit", limit + 1)), limit));

    public IReadOnlyList<FineTuningJob> JobsIn(params string[] statuses) => Run(c =>
        (IReadOnlyList<FineTuningJob>)JobsWhere(c, $"status IN ({string.Join(", ", statuses.Select((_, i) => "$s" + i))}) ORDER BY seq",
            statuses.Select((s, i) => ("$s" + i, (object?)s)).ToArray()));

    // ---- events and checkpoints ----

    public void AddEvent(JobEvent e) => Run(c => Execute(c,
        "INSERT INTO fine_tuning_events (id, job_id, created_at, level, type, message, data) VALUES ($id, $j, $t, $l, $ty, $m, $d)", null,
        ("$id", e.Id), ("$j", e.JobId), ("$t", e.CreatedAt.ToUnixTimeSeconds()), ("$l", e.Level), ("$ty", e.Type), ("$m", e.Message), ("$d", e.Data)));

    public Page<JobEvent> ListEvents(string jobId, string? after, int limit) => Run(c =>
        PageOf(Events(c, "job_id = $j AND ($after IS NULL OR seq < (SELECT seq FROM fine_tuning_events WHERE id = $after)) ORDER BY seq DESC LIMIT $limit",
            ("$j", jobId), ("$after", after), ("$limit", limit + 1)), limit));

    public IReadOnlyList<JobEvent> AllEvents(string jobId) => Run(c => (IReadOnlyList<JobEvent>)Events(c, "job_id = $j ORDER BY seq", ("$j", jobId)));

    public void AddCheckpoint(JobCheckpoint k) => Run(c => Execute(c,
        "INSERT INTO fine_tuning_checkpoints (id, job_id, created_at, step, metrics) VALUES ($id, $j, $t, $s, $m)", null,
        ("$id", k.Id), ("$j", k.JobId), ("$t", k.CreatedAt.ToUnixTimeSeconds()), ("$s", k.Step), ("$m", k.Metrics)));

    public Page<JobCheckpoint> ListCheckpoints(string jobId, string? after, int limit) => Run(c =>
    {
        using var cmd = Command(c, """
            SELECT * FROM fine_tuning_checkpoints WHERE job_id = $j
              AND ($after IS NULL OR seq < (SELECT seq FROM fine_tuning_checkpoints WHERE id = $after)) ORDER BY seq DESC LIMIT $limit
            """, null, ("$j", jobId), ("$after", after), ("$limit", limit + 1));
        using var r = cmd.ExecuteReader();
        var list = new List<JobCheckpoint>();
        while (r.Read())
            list.Add(new JobCheckpoint(r.GetString(r.GetOrdinal("id")), r.GetString(r.GetOrdinal("job_id")), Time(r, "created_at"),
                r.GetInt32(r.GetOrdinal("step")), r.GetString(r.GetOrdinal("metrics"))));
        return PageOf(list, limit);
    });

    // ---- plumbing ----

    /// <summary>Rows of one owner (all when $o is null) that come after the row $after in newest-first order (all when null).</summary>
    private static string OwnerAndAfter(string table, string? owner) =>
        $"($o IS NULL OR owner = $o) AND ($after IS NULL OR seq < (SELECT seq FROM {table} WHERE id = $after))";

    private static Page<T> PageOf<T>(List<T> rows, int limit) =>
        rows.Count > limit ? new Page<T>(rows.Take(limit).ToList(), true) : new Page<T>(rows, false);

    private static List<StoredFile> Files(SqliteConnection c, string sql, params (string, object?)[] args)
    {
        using var cmd = Command(c, sql, null, args);
        using var r = cmd.ExecuteReader();
        var list = new List<StoredFile>();
        while (r.Read())
            list.Add(new StoredFile(r.GetString(r.GetOrdinal("id")), r.GetString(r.GetOrdinal("owner")), r.GetString(r.GetOrdinal("filename")),
                r.GetString(r.GetOrdinal("purpose")), r.GetInt64(r.GetOrdinal("bytes")), Time(r, "created_at"), r.GetString(r.GetOrdinal("path"))));
        return list;
    }

    private static List<FineTuningJob> JobsWhere(SqliteConnection c, string where, params (string, object?)[] args)
    {
        using var cmd = Command(c, "SELECT job FROM fine_tuning_jobs WHERE " + where, null, args);
        using var r = cmd.ExecuteReader();
        var list = new List<FineTuningJob>();
        while (r.Read()) list.Add(JsonSerializer.Deserialize<FineTuningJob>(r.GetString(0), JobJson) ?? throw new InvalidDataException("empty job row"));
        return list;
    }

    private static List<JobEvent> Events(SqliteConnection c, string where, params (string, object?)[] args)
    {
        using var cmd = Command(c, "SELECT * FROM fine_tuning_events WHERE " + where, null, args);
        using var r = cmd.ExecuteReader();
        var list = new List<JobEvent>();
        while (r.Read())
            list.Add(new JobEvent(r.GetString(r.GetOrdinal("id")), r.GetString(r.GetOrdinal("job_id")), Time(r, "created_at"),
                r.GetString(r.GetOrdinal("level")), r.GetString(r.GetOrdinal("type")), r.GetString(r.GetOrdinal("message")),
                r.IsDBNull(r.GetOrdinal("data")) ? null : r.GetString(r.GetOrdinal("data"))));
        return list;
    }

    private static DateTimeOffset Time(SqliteDataReader r, string column) => DateTimeOffset.FromUnixTimeSeconds(r.GetInt64(r.GetOrdinal(column)));
}
