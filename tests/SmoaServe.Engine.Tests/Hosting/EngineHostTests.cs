using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Generation;
using SmoaServe.Engine.Hosting;
using SmoaServe.Engine.Model;
using SmoaServe.Engine.Scheduling;

namespace SmoaServe.Engine.Tests;

/// <summary>The engine's composition root on the real fixture model: adapters from directories and from memory, their details, work on the model thread.</summary>
public sealed class EngineHostTests : IDisposable
{
    private readonly string _data = TestTensors.TempDir();
    private readonly EngineHost _host;

    public EngineHostTests()
    {
        _host = EngineHost.Load(new EngineOptions { Model = FixturePaths.LlamaA, MaxRunning = 2, MaxModelLen = 64, Data = _data });
    }

    public void Dispose() => _host.Dispose();

    [Fact]
    public async Task Adapters_from_a_directory_and_from_memory_are_resident_with_their_details()
    {
        await _host.Ready;
        var smoa = await _host.AddAdapterAsync("smoa", AdapterSource.FromDirectory(TestModels.AdapterDir("smoa-adapter")));
        Assert.Equal(AdapterKind.Smoa, smoa.Kind);
        Assert.Equal(8, smoa.R);
        Assert.Equal(2, smoa.NumBlocks);
        Assert.Equal(["v_proj", "o_proj", "gate_proj", "down_proj"], smoa.TargetModules);
        Assert.True(smoa.Bytes > 0);

        // an in-memory adapter (what a trainer hands over): read once from files, added under another id
        var lora = await _host.RunOnDeviceAsync(b => b.ReadAdapter(TestModels.AdapterDir("lora-adapter")));
        using (lora)
        {
            var info = await _host.AddAdapterAsync("lora-from-memory", AdapterSource.FromDefinition(lora));
            Assert.Equal(AdapterKind.Lora, info.Kind);
            Assert.Equal(4, info.R);
        }
        Assert.Equal(["lora-from-memory", "smoa"], _host.ResidentAdapters.Select(a => a.Name));

        // the in-memory copy serves: the greedy continuation equals the one through its directory
        await _host.AddAdapterAsync("lora-from-files", AdapterSource.FromDirectory(TestModels.AdapterDir("lora-adapter")));
        Assert.Equal(await Greedy("lora-from-files"), await Greedy("lora-from-memory"));
        Assert.NotEqual(await Greedy(null), await Greedy("lora-from-memory"));

        Assert.True(await _host.RemoveAdapterAsync("smoa"));
        Assert.False(await _host.RemoveAdapterAsync("smoa"));
        Assert.DoesNotContain(_host.ResidentAdapters, a => a.Name == "smoa");
    }

    [Fact]
    public async Task A_bad_adapter_directory_fails_without_touching_what_is_resident()
    {
        await _host.AddAdapterAsync("lora", AdapterSource.FromDirectory(TestModels.AdapterDir("lora-adapter")));
        await Assert.ThrowsAsync<DirectoryNotFoundException>(() => _host.AddAdapterAsync("lora", AdapterSource.FromDirectory(Path.Combine(_data, "none"))));
        Assert.Equal(AdapterKind.Lora, Assert.Single(_host.ResidentAdapters).Kind);
    }

    [Fact]
    public async Task Work_runs_on_the_model_thread_with_the_model()
    {
        var (thread, layers) = await _host.RunOnDeviceAsync(b => (Thread.CurrentThread.Name, b.Model!.Model.Config.NumLayers));
        Assert.Equal("smoa-model", thread);
        Assert.Equal(2, layers);
    }

    [Fact]
    public void Invalid_options_are_refused_with_every_problem()
    {
        var e = Assert.Throws<ArgumentException>(() => EngineHost.Load(new EngineOptions { Model = FixturePaths.LlamaA, MaxRunning = 0, SmoaForm = "sideways" }));
        Assert.Contains("MaxRunning", e.Message);
        Assert.Contains("sideways", e.Message);
    }

    private async Task<string> Greedy(string? adapter)
    {
        var stream = _host.Scheduler.Submit(new GenerationRequest
        {
            PromptIds = [879, 707, 320, 187], AdapterId = adapter, Sampling = new SamplingParams { MaxTokens = 8 },
        });
        var ids = new List<int>();
        await foreach (var o in stream.Outputs.ReadAllAsync())
            if (o.IsToken) ids.Add(o.Token);
        return string.Join(",", ids);
    }
}
