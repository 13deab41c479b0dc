using Microsoft.Data.Sqlite;
using SmoaServe.Platform.Adapters;
using SmoaServe.Platform.Storage;
using SmoaServe.Platform.Tenants;

namespace SmoaServe.Platform.Tests;

public sealed class PlatformStoreTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "smoa-store-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        SqliteConnection.ClearAllPools();
        if (Directory.Exists(_dir)) Directory.Delete(_dir, true);
    }

    private static AdapterRecord Record(string owner, string name, long bytes = 100) =>
        new(name, $"{owner}/{name}@1", AdapterOrigin.Uploaded, "/x/" + name, DateTimeOffset.FromUnixTimeSeconds(1_700_000_000),
            new AdapterDetails("smoa", 8, 2, ["q_proj", "v_proj"], bytes, 1234), owner);

    [Fact]
    public void A_new_database_is_migrated_to_the_latest_schema_and_keeps_its_data_when_reopened()
    {
        string path = Path.Combine(_dir, "smoa.db");
        string id;
        using (var store = new SqlitePlatformStore(path))
        {
            Assert.Equal(SqlitePlatformStore.Migrations.Count, store.SchemaVersion);
            id = store.CreateTenant("acme", new TenantQuota(MaxAdapters: 3), ApiKeys.Hash("smoa-k1")).Id;
            Assert.True(store.TryAddAdapter(Record(id, "one")));
        }
        using (var again = new SqlitePlatformStore(path))
        {
            Assert.Equal(SqlitePlatformStore.Migrations.Count, again.SchemaVersion);
            var tenant = again.GetTenant(id)!;
            Assert.Equal(("acme", 3), (tenant.Name, tenant.Quota.MaxAdapters));
            var adapter = Assert.Single(again.ListAdapters(id));
            var expected = Record(id, "one");
            Assert.Equal(expected with { Details = adapter.Details }, adapter);
            Assert.Equal(expected.Details with { TargetModules = adapter.Details.TargetModules }, adapter.Details);
            Assert.Equal(expected.Details.TargetModules, adapter.Details.TargetModules);
        }
    }

    [Fact]
    public void A_database_from_a_newer_build_is_refused()
    {
        string path = Path.Combine(_dir, "future.db");
        using (var store = new SqlitePlatformStore(path)) { }
        using (var c = new SqliteConnection($"Data Source={path}"))
        {
            c.Open();
            using var cmd = c.CreateCommand();
            cmd.CommandText = $"PRAGMA user_version = {SqlitePlatformStore.Migrations.Count + 1}";
            cmd.ExecuteNonQuery();
        }
        SqliteConnection.ClearAllPools();
        Assert.Contains("newer", Assert.Throws<InvalidOperationException>(() => new SqlitePlatformStore(path)).Message);
    }

    [Fact]
    public void Keys_are_found_by_hash_replaced_on_rotation_and_gone_with_the_tenant()
    {
        using var store = SqlitePlatformStore.OpenIn(_dir);
        var a = store.CreateTenant("a", TenantQuota.None, ApiKeys.Hash("smoa-old"));
        var b = store.CreateTenant("b", TenantQuota.None, ApiKeys.Hash("smoa-b"));
        Assert.Throws<TenantExistsException>(() => store.CreateTenant("a", TenantQuota.None, ApiKeys.Hash("smoa-other")));
        Assert.Equal(a.Id, store.FindTenantByKeyHash(ApiKeys.Hash("smoa-old"))!.Id);
        Assert.Null(store.FindTenantByKeyHash(ApiKeys.Hash("smoa-nope")));

        Assert.True(store.ReplaceKeys(a.Id, ApiKeys.Hash("smoa-new")));
        Assert.Null(store.FindTenantByKeyHash(ApiKeys.Hash("smoa-old")));
        Assert.Equal(a.Id, store.FindTenantByKeyHash(ApiKeys.Hash("smoa-new"))!.Id);
        Assert.False(store.ReplaceKeys("t-missing", ApiKeys.Hash("smoa-x")));

        Assert.True(store.TryAddAdapter(Record(a.Id, "x")));
        Assert.True(store.DeleteTenant(a.Id));
        Assert.Null(store.FindTenantByKeyHash(ApiKeys.Hash("smoa-new")));
        Assert.Empty(store.ListAdapters(a.Id));
        Assert.Equal(b.Id, store.FindTenantByKeyHash(ApiKeys.Hash("smoa-b"))!.Id);
        Assert.False(store.DeleteTenant(a.Id));
    }

    [Fact]
    public void Adapter_names_are_unique_per_namespace_and_usage_is_summed()
    {
        using var store = SqlitePlatformStore.OpenIn(_dir);
        Assert.True(store.TryAddAdapter(Record("t1", "same", 10)));
        Assert.False(store.TryAddAdapter(Record("t1", "same", 10) with { EngineId = "other" }));
        Assert.True(store.TryAddAdapter(Record("t2", "same", 5)));
        Assert.True(store.TryAddAdapter(Record("t1", "more", 7)));
        Assert.Equal((2, 17L), store.Usage("t1"));
        Assert.True(store.RemoveAdapter("t1", "same"));
        Assert.False(store.RemoveAdapter("t1", "same"));
        Assert.Equal(["same"], store.ListAdapters("t2").Select(r => r.Name));
    }

    [Fact]
    public void Api_keys_are_random_prefixed_and_compared_by_hash()
    {
        string k1 = ApiKeys.Generate(), k2 = ApiKeys.Generate();
        Assert.NotEqual(k1, k2);
        Assert.StartsWith(ApiKeys.Prefix, k1);
        Assert.True(k1.Length >= 40);
        Assert.True(ApiKeys.Matches(ApiKeys.Hash(k1), k1));
        Assert.False(ApiKeys.Matches(ApiKeys.Hash(k1), k2));
    }

    [Fact]
    public void Transient_faults_are_retried_a_bounded_number_of_times()
    {
        var retry = TransientRetry.Create(TimeSpan.FromMilliseconds(1));
        int calls = 0;
        Assert.Equal(42, retry.Execute(() => ++calls < 3 ? throw new SqliteException("database is locked", 5) : 42));
        Assert.Equal(3, calls);

        calls = 0;
        Assert.Throws<SqliteException>(() => retry.Execute<int>(() => { calls++; throw new SqliteException("busy", 5); }));
        Assert.Equal(TransientRetry.MaxAttempts + 1, calls);

        calls = 0; // not transient: no retry
        Assert.Throws<SqliteException>(() => retry.Execute<int>(() => { calls++; throw new SqliteException("constraint", 19); }));
        Assert.Equal(1, calls);
        calls = 0;
        Assert.Throws<FileNotFoundException>(() => retry.Execute<int>(() => { calls++; throw new FileNotFoundException("gone"); }));
        Assert.Equal(1, calls);
    }

    [Fact]
    public void A_writer_holding_the_database_briefly_does_not_fail_a_request()
    {
        using var store = SqlitePlatformStore.OpenIn(_dir);
        using var blocker = new SqliteConnection($"Data Source={store.Path}");
        blocker.Open();
        using (var cmd = blocker.CreateCommand()) { cmd.CommandText = "BEGIN EXCLUSIVE"; cmd.ExecuteNonQuery(); }
        var release = Task.Run(async () =>
        {
            await Task.Delay(300);
            using var cmd = blocker.CreateCommand();
            cmd.CommandText = "COMMIT";
            cmd.ExecuteNonQuery();
        });
        var tenant = store.CreateTenant("patient", TenantQuota.None, ApiKeys.Hash("smoa-p"));
        release.Wait();
        Assert.Equal(tenant.Id, store.FindTenantByName("patient")!.Id);
    }
}
