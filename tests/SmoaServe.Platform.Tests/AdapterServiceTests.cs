using SmoaServe.Engine.Hosting;
using SmoaServe.Engine.Scheduling;
using SmoaServe.Platform.Adapters;

namespace SmoaServe.Platform.Tests;

public sealed class AdapterServiceTests : IAsyncLifetime
{
    private readonly FakeRunner _runner = new();
    private EngineHost _engine = null!;
    private AdapterService _service = null!;
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "smoa-platform-" + Guid.NewGuid().ToString("N"));

    public async Task InitializeAsync()
    {
        _engine = new EngineHost(FakeBackend.Spec(_runner), new SchedulerOptions());
        await _engine.Ready;
        _service = new AdapterService(new InMemoryAdapterCatalog(), _engine, "base");
        Directory.CreateDirectory(_dir);
        File.WriteAllText(Path.Combine(_dir, "adapter_config.json"), "{}");
    }

    public Task DisposeAsync()
    {
        _engine.Dispose();
        Directory.Delete(_dir, recursive: true);
        return Task.CompletedTask;
    }

    [Fact]
    public async Task A_registered_adapter_is_listed_resident_and_resolvable()
    {
        var record = await _service.RegisterAsync("tenant-a", AdapterSource.FromDirectory(_dir), AdapterOrigin.Preloaded);
        Assert.Equal("tenant-a", record.Name);
        Assert.Equal(Path.GetFullPath(_dir), record.Directory);
        Assert.Equal("lora", record.Details.Type);
        Assert.Equal(["tenant-a"], _service.Catalog.List().Select(r => r.Name));
        Assert.Contains(_engine.ResidentAdapters, a => a.Name == "tenant-a");
        Assert.Equal(record.EngineId, _service.Resolve("tenant-a"));
        Assert.Null(_service.Resolve("base"));
        Assert.Null(_service.Resolve(null));
        Assert.Throws<UnknownModelException>(() => _service.Resolve("other"));
    }

    [Fact]
    public async Task Removing_unlists_and_evicts()
    {
        await _service.RegisterAsync("gone", AdapterSource.FromDirectory(_dir), AdapterOrigin.Directory);
        Assert.True(await _service.RemoveAsync("gone"));
        Assert.Empty(_service.Catalog.List());
        Assert.DoesNotContain(_engine.ResidentAdapters, a => a.Name == "gone");
        Assert.Throws<UnknownModelException>(() => _service.Resolve("gone"));
        Assert.False(await _service.RemoveAsync("gone"));
    }

    [Theory]
    [InlineData("../evil")]
    [InlineData("base")]
    [InlineData("")]
    public async Task Names_breaking_the_rule_are_refused_before_anything_loads(string name)
    {
        await Assert.ThrowsAsync<ArgumentException>(() => _service.RegisterAsync(name, AdapterSource.FromDirectory(_dir), AdapterOrigin.Preloaded));
        Assert.Empty(_service.Catalog.List());
        Assert.Empty(_engine.ResidentAdapters);
    }

    [Fact]
    public async Task An_adapter_that_fails_to_load_is_not_listed()
    {
        string empty = Path.Combine(_dir, "empty");
        Directory.CreateDirectory(empty);
        await Assert.ThrowsAsync<InvalidDataException>(() => _service.RegisterAsync("bad", AdapterSource.FromDirectory(empty), AdapterOrigin.Directory));
        Assert.False(_service.Catalog.TryGet("bad", out _));
        await Assert.ThrowsAsync<DirectoryNotFoundException>(() =>
            _service.RegisterAsync("missing", AdapterSource.FromDirectory(Path.Combine(_dir, "nope")), AdapterOrigin.Directory));
        Assert.Empty(_service.Catalog.List());
    }

    [Fact]
    public async Task An_in_memory_adapter_registers_like_a_directory()
    {
        using var definition = FakeBackend.Empty();
        var record = await _service.RegisterAsync("trained", AdapterSource.FromDefinition(definition), AdapterOrigin.BuiltIn);
        Assert.Null(record.Directory);
        Assert.Equal(AdapterOrigin.BuiltIn, record.Origin);
        Assert.Equal("trained", _service.Resolve("trained"));
    }
}
