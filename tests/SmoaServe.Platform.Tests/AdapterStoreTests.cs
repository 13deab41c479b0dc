using Microsoft.Data.Sqlite;
using SmoaServe.Engine.Hosting;
using SmoaServe.Engine.Scheduling;
using SmoaServe.Platform.Adapters;
using SmoaServe.Platform.Storage;
using SmoaServe.Platform.Tenants;

namespace SmoaServe.Platform.Tests;

/// <summary>Uploads through the adapter service over the SQLite store and the file store (fake engine: a directory is
/// an adapter when it holds adapter_config.json).</summary>
public sealed class AdapterStoreTests : IAsyncLifetime
{
    private readonly string _data = Path.Combine(Path.GetTempPath(), "smoa-adapter-store-" + Guid.NewGuid().ToString("N"));
    private readonly FakeRunner _runner = new();
    private EngineHost _engine = null!;
    private SqlitePlatformStore _store = null!;
    private AdapterService _service = null!;
    private TenantService _tenants = null!;

    public async Task InitializeAsync()
    {
        _engine = new EngineHost(FakeBackend.Spec(_runner), new SchedulerOptions());
        await _engine.Ready;
        Open();
    }

    private void Open()
    {
        _store = SqlitePlatformStore.OpenIn(_data);
        _service = new AdapterService(new StoredAdapterCatalog(_store), _engine, "base", new AdapterFileStore(_data), _store);
        _tenants = new TenantService(_store, _service);
    }

    public Task DisposeAsync()
    {
        _engine.Dispose();
        _store.Dispose();
        SqliteConnection.ClearAllPools();
        Directory.Delete(_data, true);
        return Task.CompletedTask;
    }

    private string Stage(bool valid = true)
    {
        string dir = _service.Files!.CreateStaging();
        if (valid) File.WriteAllText(Path.Combine(dir, "adapter_config.json"), "{}");
        File.WriteAllBytes(Path.Combine(dir, "adapter_model.safetensors"), new byte[100]);
        return dir;
    }

    private string AdaptersRoot => Path.Combine(_data, "adapters");

    [Fact]
    public async Task An_upload_is_stored_listed_and_registered_to_load_on_first_use()
    {
        var t = _tenants.Create("acme").Tenant;
        var record = await _service.UploadAsync(t.Id, "first", Stage());
        Assert.Equal((t.Id, "first", AdapterOrigin.Uploaded), (record.Owner, record.Name, record.Origin));
        Assert.Equal(Path.Combine(AdaptersRoot, t.Id, "first"), record.Directory);
        Assert.True(File.Exists(Path.Combine(record.Directory!, "adapter_model.safetensors")));
        Assert.Equal(100 + 2, record.Details.Bytes);
        Assert.Single(_store.ListAdapters(t.Id));
        Assert.Equal(AdapterTier.Host, _engine.Residency.List().Single(r => r.Id == record.EngineId).Tier);
        Assert.Empty(Directory.EnumerateDirectories(Path.Combine(AdaptersRoot, ".staging")));
        Assert.Equal(record.EngineId, _service.Resolve(AdapterScope.ForTenant(t.Id), "first"));
        Assert.Throws<UnknownModelException>(() => _service.Resolve(AdapterScope.ForTenant("t-other"), "first"));
        Assert.Equal(record.EngineId, _service.Resolve(AdapterScope.Admin, "acme/first"));
    }

    [Fact]
    public async Task A_rejected_upload_leaves_nothing_behind()
    {
        var t = _tenants.Create("careful").Tenant;
        await Assert.ThrowsAsync<InvalidAdapterException>(() => _service.UploadAsync(t.Id, "bad", Stage(valid: false)));
        await Assert.ThrowsAsync<ArgumentException>(() => _service.UploadAsync(t.Id, "../escape", Stage()));
        await Assert.ThrowsAsync<ArgumentException>(() => _service.UploadAsync(t.Id, "base", Stage()));
        await _service.UploadAsync(t.Id, "ok", Stage());
        await Assert.ThrowsAsync<AdapterExistsException>(() => _service.UploadAsync(t.Id, "ok", Stage()));
        Assert.Equal(["ok"], _store.ListAdapters(t.Id).Select(r => r.Name));
        Assert.Equal(["ok"], Directory.EnumerateDirectories(Path.Combine(AdaptersRoot, t.Id)).Select(Path.GetFileName));
        Assert.Empty(Directory.EnumerateDirectories(Path.Combine(AdaptersRoot, ".staging")));
        Assert.Single(_engine.Residency.List());
    }

    [Fact]
    public async Task Quotas_bound_count_and_bytes()
    {
        var t = _tenants.Create("small", new TenantQuota(MaxAdapters: 2, MaxBytes: 250)).Tenant;
        await _service.UploadAsync(t.Id, "a", Stage(), t.Quota);
        await _service.UploadAsync(t.Id, "b", Stage(), t.Quota);
        var count = await Assert.ThrowsAsync<QuotaExceededException>(() => _service.UploadAsync(t.Id, "c", Stage(), t.Quota));
        Assert.Equal("max_adapters", count.Limit);
        var t2 = _tenants.Create("tiny", new TenantQuota(MaxBytes: 150)).Tenant;
        await _service.UploadAsync(t2.Id, "a", Stage(), t2.Quota);
        Assert.Equal("max_bytes", (await Assert.ThrowsAsync<QuotaExceededException>(() => _service.UploadAsync(t2.Id, "b", Stage(), t2.Quota))).Limit);
    }

    [Fact]
    public async Task After_a_restart_stored_adapters_come_back_and_crash_leftovers_are_cleaned()
    {
        var t = _tenants.Create("durable").Tenant;
        var kept = await _service.UploadAsync(t.Id, "kept", Stage());
        Assert.True(_service.SetPinned(kept, true));
        var lost = await _service.UploadAsync(t.Id, "lost", Stage());
        // what a crash can leave: a half-written staging folder, a folder renamed into place without its row, a row whose folder vanished
        string halfWritten = Stage();
        string orphan = Path.Combine(AdaptersRoot, t.Id, "orphan");
        Directory.CreateDirectory(orphan);
        File.WriteAllText(Path.Combine(orphan, "adapter_config.json"), "{}");
        Directory.Delete(lost.Directory!, true);

        // "restart": a new engine, store, catalog and service on the same data directory
        _engine.Dispose();
        _store.Dispose();
        _engine = new EngineHost(FakeBackend.Spec(new FakeRunner()), new SchedulerOptions());
        await _engine.Ready;
        Open();
        var restored = await _service.RestoreAsync();

        Assert.Equal(["kept"], restored.Select(r => r.Name));
        Assert.Equal(kept.EngineId, _service.Resolve(AdapterScope.ForTenant(t.Id), "kept"));
        Assert.Throws<UnknownModelException>(() => _service.Resolve(AdapterScope.ForTenant(t.Id), "lost"));
        Assert.Equal(["kept"], _store.ListAdapters(t.Id).Select(r => r.Name));
        Assert.False(Directory.Exists(halfWritten));
        Assert.False(Directory.Exists(orphan));
        Assert.True(Directory.Exists(kept.Directory));
        var residency = _engine.Residency.List().Single();
        Assert.Equal(AdapterTier.Disk, residency.Tier);
        Assert.True(residency.Pinned); // the pin survived the restart
    }

    [Fact]
    public async Task Deleting_a_tenant_removes_its_adapters_everywhere()
    {
        var a = _tenants.Create("gone").Tenant;
        var b = _tenants.Create("stays").Tenant;
        var ra = await _service.UploadAsync(a.Id, "x", Stage());
        var rb = await _service.UploadAsync(b.Id, "x", Stage());
        Assert.True(await _tenants.DeleteAsync(a.Id));
        Assert.Null(_tenants.Authenticate("smoa-anything"));
        Assert.False(Directory.Exists(Path.Combine(AdaptersRoot, a.Id)));
        Assert.False(_engine.Residency.IsRegistered(ra.EngineId));
        Assert.True(_engine.Residency.IsRegistered(rb.EngineId));
        Assert.Equal(["x"], _service.Catalog.List().Select(r => r.Name));
        Assert.False(await _tenants.DeleteAsync(a.Id));
    }
}
