using System.Text.Json;
using Microsoft.Data.Sqlite;
using Polly;
using Polly.Retry;
using SmoaServe.Platform.Adapters;
using SmoaServe.Platform.Tenants;

namespace SmoaServe.Platform.Storage;

/// <summary>
/// The platform store in an embedded SQLite database (<c>&lt;data&gt;/smoa.db</c>, WAL journal): tenants, API key
/// hashes, quotas and persistent adapters. The schema is created and upgraded by numbered migrations recorded in
/// <c>PRAGMA user_version</c>; a database newer than this build is refused. Every statement runs through a bounded
/// retry for transient contention (SQLITE_BUSY / SQLITE_LOCKED).
/// </summary>
public sealed partial class SqlitePlatformStore : IPlatformStore, FineTuning.IFineTuningStore
{
    public const string FileName = "smoa.db";

    /// <summary>Schema migrations, applied in order; index + 1 is the schema version after each. Never edit one that shipped.</summary>
    public static readonly IReadOnlyList<string> Migrations =
    [
        // 1: tenants, keys, adapters
        """
        CREATE TABLE tenants (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created_at INTEGER NOT NULL,
            max_adapters INTEGER,
            max_bytes INTEGER,
            max_concurrent_requests INTEGER
        );
        CREATE TABLE api_keys (
            hash BLOB PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            created_at INTEGER NOT NULL
        );
        CREATE INDEX api_keys_tenant ON api_keys(tenant_id);
        CREATE TABLE adapters (
            owner TEXT NOT NULL,
            name TEXT NOT NULL,
            engine_id TEXT NOT NULL UNIQUE,
            origin TEXT NOT NULL,
            directory TEXT NOT NULL,
            type TEXT NOT NULL,
            r INTEGER NOT NULL,
            num_blocks INTEGER,
            target_modules TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            parameters INTEGER NOT NULL,
            pinned INTEGER NOT NULL DEFAULT 0,
            created_at INTEGER NOT NULL,
            PRIMARY KEY (owner, name)
        );
        """,
        // 2: files and fine-tuning jobs, their events and checkpoints (seq orders lists newest first)
        """
        CREATE TABLE files (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            owner TEXT NOT NULL,
            filename TEXT NOT NULL,
            purpose TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            created_at INTEGER NOT NULL,
            path TEXT NOT NULL
        );
        CREATE INDEX files_owner ON files(owner);
        CREATE TABLE fine_tuning_jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            owner TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            job TEXT NOT NULL
        );
        CREATE INDEX fine_tuning_jobs_owner ON fine_tuning_jobs(owner);
        CREATE INDEX fine_tuning_jobs_status ON fine_tuning_jobs(status);
        CREATE TABLE fine_tuning_events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            job_id TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            level TEXT NOT NULL,
            type TEXT NOT NULL,
            message TEXT NOT NULL,
            data TEXT
        );
        CREATE INDEX fine_tuning_events_job ON fine_tuning_events(job_id, seq);
        CREATE TABLE fine_tuning_checkpoints (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            job_id TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            step INTEGER NOT NULL,
            metrics TEXT NOT NULL
        );
        CREATE INDEX fine_tuning_checkpoints_job ON fine_tuning_checkpoints(job_id, seq);
        """,
    ];

    private readonly string _connectionString;
    private readonly ResiliencePipeline _retry;

    public SqlitePlatformStore(string path, ResiliencePipeline? retry = null)
    {
        Path = System.IO.Path.GetFullPath(path);
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(Path)!);
        _connectionString = new SqliteConnectionStringBuilder
        {
            DataSource = Path, Mode = SqliteOpenMode.ReadWriteCreate, Cache = SqliteCacheMode.Private, Pooling = true, DefaultTimeout = 5,
        }.ToString();
        _retry = retry ?? TransientRetry.Create();
        Migrate();
    }

    public string Path { get; }

    /// <summary>The schema version of the open database.</summary>
    public int SchemaVersion => Run(c => Convert.ToInt32(Scalar(c, "PRAGMA user_version")));

    /// <summary>Opens (creating if needed) <c>&lt;dataDirectory&gt;/smoa.db</c>.</summary>
    public static SqlitePlatformStore OpenIn(string dataDirectory) => new(System.IO.Path.Combine(dataDirectory, FileName));

    private void Migrate() => Run(c =>
    {
        Execute(c, "PRAGMA journal_mode=WAL");
        int version = Convert.ToInt32(Scalar(c, "PRAGMA user_version"));
        if (version > Migrations.Count)
            throw new InvalidOperationException($"{Path}: schema version {version} is newer than this build knows ({Migrations.Count}); upgrade smoa");
        for (int v = version; v < Migrations.Count; v++)
        {
            using var tx = c.BeginTransaction();
            Execute(c, Migrations[v], tx);
            Execute(c, $"PRAGMA user_version = {v + 1}", tx);
            tx.Commit();
        }
        return true;
    });

    // ---- tenants ----

    public Tenant CreateTenant(string name, TenantQuota quota, byte[] keyHash) => Run(c =>
    {
        using var tx = c.BeginTransaction();
        if (Scalar(c, "SELECT 1 FROM tenants WHERE name = $n", tx, ("$n", name)) is not null) throw new TenantExistsException(name);
        var tenant = new Tenant(ApiKeys.NewTenantId(), name, Now(), quota);
        Execute(c, "INSERT INTO tenants (id, name, created_at, max_adapters, max_bytes, max_concurrent_requests) VALUES ($id, $n, $t, $ma, $mb, $mc)", tx,
            ("$id", tenant.Id), ("$n", name), ("$t", tenant.CreatedAt.ToUnixTimeSeconds()),
            ("$ma", quota.MaxAdapters), ("$mb", quota.MaxBytes), ("$mc", quota.MaxConcurrentRequests));
        Execute(c, "INSERT INTO api_keys (hash, tenant_id, created_at) VALUES ($h, $id, $t)", tx,
            ("$h", keyHash), ("$id", tenant.Id), ("$t", tenant.CreatedAt.ToUnixTimeSeconds()));
        tx.Commit();
        return tenant;
    });

    public IReadOnlyList<Tenant> ListTenants() => Run(c => Tenants(c, "SELECT * FROM tenants ORDER BY created_at, name"));
    public Tenant? GetTenant(string id) => Run(c => Tenants(c, "SELECT * FROM tenants WHERE id = $v", ("$v", id)).FirstOrDefault());
    public Tenant? FindTenantByName(string name) => Run(c => Tenants(c, "SELECT * FROM tenants WHERE name = $v", ("$v", name)).FirstOrDefault());

    public Tenant? FindTenantByKeyHash(byte[] keyHash) => Run(c =>
        Tenants(c, "SELECT t.* FROM tenants t JOIN api_keys k ON k.tenant_id = t.id WHERE k.hash = $v", ("$v", keyHash)).FirstOrDefault());

    public bool ReplaceKeys(string tenantId, byte[] keyHash) => Run(c =>
    {
        using var tx = c.BeginTransaction();
        if (Scalar(c, "SELECT 1 FROM tenants WHERE id = $id", tx, ("$id", tenantId)) is null) return false;
        Execute(c, "DELETE FROM api_keys WHERE tenant_id = $id", tx, ("$id", tenantId));
        Execute(c, "INSERT INTO api_keys (hash, tenant_id, created_at) VALUES ($h, $id, $t)", tx,
            ("$h", keyHash), ("$id", tenantId), ("$t", Now().ToUnixTimeSeconds()));
        tx.Commit();
        return true;
    });

    public bool SetQuota(string tenantId, TenantQuota quota) => Run(c =>
        Execute(c, "UPDATE tenants SET max_adapters = $ma, max_bytes = $mb, max_concurrent_requests = $mc WHERE id = $id", null,
            ("$id", tenantId), ("$ma", quota.MaxAdapters), ("$mb", quota.MaxBytes), ("$mc", quota.MaxConcurrentRequests)) > 0);

    public bool DeleteTenant(string tenantId) => Run(c =>
    {
        using var tx = c.BeginTransaction();
        Execute(c, "DELETE FROM api_keys WHERE tenant_id = $id", tx, ("$id", tenantId));
        Execute(c, "DELETE FROM adapters WHERE owner = $id", tx, ("$id", tenantId));
        int n = Execute(c, "DELETE FROM tenants WHERE id = $id", tx, ("$id", tenantId));
        tx.Commit();
        return n > 0;
    });

    // ---- adapters ----

    public IReadOnlyList<AdapterRecord> ListAdapters(string? owner = null) => Run(c =>
    {
        using var cmd = Command(c, owner is null ? "SELECT * FROM adapters ORDER BY owner, name" : "SELECT * FROM adapters WHERE owner = $o ORDER BY name",
            null, ("$o", owner));
        using var r = cmd.ExecuteReader();
        var list = new List<AdapterRecord>();
        while (r.Read())
        {
            var details = new AdapterDetails(r.GetString(r.GetOrdinal("type")), r.GetInt32(r.GetOrdinal("r")),
                r.IsDBNull(r.GetOrdinal("num_blocks")) ? null : r.GetInt32(r.GetOrdinal("num_blocks")),
                JsonSerializer.Deserialize<List<string>>(r.GetString(r.GetOrdinal("target_modules"))) ?? [],
                r.GetInt64(r.GetOrdinal("bytes")), r.GetInt64(r.GetOrdinal("parameters")));
            list.Add(new AdapterRecord(r.GetString(r.GetOrdinal("name")), r.GetString(r.GetOrdinal("engine_id")),
                Enum.Parse<AdapterOrigin>(r.GetString(r.GetOrdinal("origin"))), r.GetString(r.GetOrdinal("directory")),
                DateTimeOffset.FromUnixTimeSeconds(r.GetInt64(r.GetOrdinal("created_at"))), details,
                r.GetString(r.GetOrdinal("owner")), r.GetInt64(r.GetOrdinal("pinned")) != 0));
        }
        return (IReadOnlyList<AdapterRecord>)list;
    });

    public bool TryAddAdapter(AdapterRecord a) => Run(c =>
    {
        try
        {
            Execute(c, """
                INSERT INTO adapters (owner, name, engine_id, origin, directory, type, r, num_blocks, target_modules, bytes, parameters, pinned, created_at)
                VALUES ($o, $n, $e, $origin, $d, $type, $r, $k, $tm, $b, $p, $pin, $t)
                """, null,
                ("$o", a.Owner), ("$n", a.Name), ("$e", a.EngineId), ("$origin", a.Origin.ToString()), ("$d", a.Directory ?? ""),
                ("$type", a.Details.Type), ("$r", a.Details.R), ("$k", a.Details.NumBlocks), ("$tm", JsonSerializer.Serialize(a.Details.TargetModules)),
                ("$b", a.Details.Bytes), ("$p", a.Details.Parameters), ("$pin", a.Pinned ? 1 : 0), ("$t", a.CreatedAt.ToUnixTimeSeconds()));
            return true;
        }
        catch (SqliteException e) when (e.SqliteErrorCode == 19) // SQLITE_CONSTRAINT: the name (or engine id) is taken
        {
            return false;
        }
    });

    public bool RemoveAdapter(string owner, string name) => Run(c =>
        Execute(c, "DELETE FROM adapters WHERE owner = $o AND name = $n", null, ("$o", owner), ("$n", name)) > 0);

    public bool SetPinned(string owner, string name, bool pinned) => Run(c =>
        Execute(c, "UPDATE adapters SET pinned = $p WHERE owner = $o AND name = $n", null, ("$p", pinned ? 1 : 0), ("$o", owner), ("$n", name)) > 0);

    public (int Count, long Bytes) Usage(string owner) => Run(c =>
    {
        using var cmd = Command(c, "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM adapters WHERE owner = $o", null, ("$o", owner));
        using var r = cmd.ExecuteReader();
        r.Read();
        return (r.GetInt32(0), r.GetInt64(1));
    });

    public void Dispose() => SqliteConnection.ClearPool(new SqliteConnection(_connectionString));

    // ---- plumbing ----

    private T Run<T>(Func<SqliteConnection, T> work) => _retry.Execute(() =>
    {
        using var c = new SqliteConnection(_connectionString);
        c.Open();
        Execute(c, "PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 2000");
        return work(c);
    });

    private static List<Tenant> Tenants(SqliteConnection c, string sql, params (string, object?)[] args)
    {
        using var cmd = Command(c, sql, null, args);
        using var r = cmd.ExecuteReader();
        var list = new List<Tenant>();
        while (r.Read())
            list.Add(new Tenant(r.GetString(r.GetOrdinal("id")), r.GetString(r.GetOrdinal("name")),
                DateTimeOffset.FromUnixTimeSeconds(r.GetInt64(r.GetOrdinal("created_at"))),
                new TenantQuota(NullableInt(r, "max_adapters"), r.IsDBNull(r.GetOrdinal("max_bytes")) ? null : r.GetInt64(r.GetOrdinal("max_bytes")),
                    NullableInt(r, "max_concurrent_requests"))));
        return list;
    }

    private static int? NullableInt(SqliteDataReader r, string column) => r.IsDBNull(r.GetOrdinal(column)) ? null : r.GetInt32(r.GetOrdinal(column));

    private static SqliteCommand Command(SqliteConnection c, string sql, SqliteTransaction? tx, params (string Name, object? Value)[] args)
    {
        var cmd = c.CreateCommand();
        cmd.CommandText = sql;
        cmd.Transaction = tx;
        foreach (var (name, value) in args) cmd.Parameters.AddWithValue(name, value ?? DBNull.Value);
        return cmd;
    }

    private static int Execute(SqliteConnection c, string sql, SqliteTransaction? tx = null, params (string, object?)[] args)
    {
        using var cmd = Command(c, sql, tx, args);
        return cmd.ExecuteNonQuery();
    }

    private static object? Scalar(SqliteConnection c, string sql, SqliteTransaction? tx = null, params (string, object?)[] args)
    {
        using var cmd = Command(c, sql, tx, args);
        return cmd.ExecuteScalar();
    }

    private static DateTimeOffset Now() => DateTimeOffset.FromUnixTimeSeconds(DateTimeOffset.UtcNow.ToUnixTimeSeconds());
}

/// <summary>Bounded retries with jittered exponential backoff for transient storage faults: SQLite busy/locked, file contention.</summary>
public static class TransientRetry
{
    public const int MaxAttempts = 5;

    public static ResiliencePipeline Create(TimeSpan? baseDelay = null) => new ResiliencePipelineBuilder()
        .AddRetry(new RetryStrategyOptions
        {
            ShouldHandle = new PredicateBuilder().Handle<SqliteException>(IsTransient).Handle<IOException>(IsContention),
            MaxRetryAttempts = MaxAttempts,
            BackoffType = DelayBackoffType.Exponential,
            UseJitter = true,
            Delay = baseDelay ?? TimeSpan.FromMilliseconds(20),
        })
        .Build();

    /// <summary>SQLITE_BUSY (5) and SQLITE_LOCKED (6): another connection holds the database for a moment.</summary>
    public static bool IsTransient(SqliteException e) => e.SqliteErrorCode is 5 or 6;

    /// <summary>Sharing violations and the like; not "not found" or "no space", which retrying does not cure.</summary>
    public static bool IsContention(IOException e) =>
        e is not (FileNotFoundException or DirectoryNotFoundException or PathTooLongException or EndOfStreamException) && e.HResult is not (unchecked((int)0x80070070) or 28);
}
