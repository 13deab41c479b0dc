using System.Diagnostics;
using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Generation;
using SmoaServe.Engine.Hosting;
using SmoaServe.Engine.Model;
using SmoaServe.Engine.Runner;
using SmoaServe.Engine.Scheduling;
using SmoaServe.Text;

namespace SmoaServe.Engine.Tests;

/// <summary>
/// Loading an adapter never makes the model thread wait on files or on CPU-side preparation: reading, validation and
/// preparation run on pool threads, only the device steps and the commit on the model thread; a FIFO under the config's
/// name is refused at once while a stream keeps decoding.
/// </summary>
public sealed class AdapterLoadOffModelThreadTests : IDisposable
{
    private readonly RecordingBackend.Log _log = new();
    private readonly EngineHost _host;

    public AdapterLoadOffModelThreadTests()
    {
        var dir = FixturePaths.LlamaA;
        _host = new EngineHost(
            new EngineSetup(TokenizerLoader.Load(dir), null, new HashSet<int>(),
                () => new RecordingBackend(new ServingBackend(EngineModel.Load(dir, ModelLoadOptions.Cpu), 2, 256), _log)),
            new SchedulerOptions());
    }

    public void Dispose() => _host.Dispose();

    [Fact]
    public async Task Reading_and_preparing_run_off_the_model_thread_and_steps_on_it()
    {
        await _host.AddAdapterAsync("smoa", AdapterSource.FromDirectory(TestModels.AdapterDir("smoa-adapter")));
        var calls = _log.Calls.ToList();
        Assert.Contains(calls, c => c.Call == "read" && c.Thread != "smoa-model");
        Assert.Contains(calls, c => c.Call == "prepare" && c.Thread != "smoa-model");
        Assert.Contains(calls, c => c.Call == "step");
        Assert.All(calls.Where(c => c.Call is "step" or "commit"), c => Assert.Equal("smoa-model", c.Thread));
        Assert.Equal(8, calls.Count(c => c.Call == "step"));                  // one per module
        Assert.Single(calls, c => c.Call == "commit");
    }

    [Fact]
    public async Task A_fifo_in_an_adapter_folder_is_refused_while_a_stream_keeps_decoding()
    {
        await _host.Ready;
        string dir = TestTensors.TempDir();
        File.Copy(Path.Combine(TestModels.AdapterDir("lora-adapter"), AdapterFiles.WeightsFile), Path.Combine(dir, AdapterFiles.WeightsFile));
        using (var p = Process.Start("mkfifo", Path.Combine(dir, AdapterFiles.ConfigFile))) p.WaitForExit();

        var stream = _host.Scheduler.Submit(new GenerationRequest { PromptIds = [879, 707, 320, 187], Sampling = new SamplingParams { MaxTokens = 200 } });
        var clock = Stopwatch.StartNew();
        var e = await Assert.ThrowsAsync<InvalidDataException>(() => _host.AddAdapterAsync("fifo", AdapterSource.FromDirectory(dir)));
        Assert.Contains("FIFO", e.Message);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(5), $"refusing took {clock.Elapsed}");
        int tokens = 0;
        FinishReason? finish = null;
        await foreach (var o in stream.Outputs.ReadAllAsync())
            if (o.IsToken) tokens++; else finish = o.Finish;
        Assert.Equal(FinishReason.Length, finish);
        Assert.Equal(200, tokens);
    }

    /// <summary>Forwards to the real backend and records which thread each adapter call ran on.</summary>
    private sealed class RecordingBackend(IEngineBackend inner, RecordingBackend.Log log) : IEngineBackend
    {
        public sealed class Log
        {
            public System.Collections.Concurrent.ConcurrentQueue<(string Call, string? Thread)> Calls { get; } = new();
            public void Add(string call) => Calls.Enqueue((call, Thread.CurrentThread.Name));
        }

        public IModelRunner Runner => inner.Runner;
        public AdapterDefinition ReadAdapter(string directory) { log.Add("read"); return inner.ReadAdapter(directory); }
        public AdapterInfo AddAdapter(string id, AdapterDefinition definition) { log.Add("add"); return inner.AddAdapter(id, definition); }
        public IAdapterInstall PrepareAdapter(string id, AdapterDefinition definition) { log.Add("prepare"); return new Install(inner.PrepareAdapter(id, definition), log); }
        public bool RemoveAdapter(string id) => inner.RemoveAdapter(id);
        public IReadOnlyList<AdapterInfo> ResidentAdapters => inner.ResidentAdapters;
        public EngineModel? Model => inner.Model;
        public void Dispose() => inner.Dispose();

        private sealed class Install(IAdapterInstall inner, Log log) : IAdapterInstall
        {
            public bool Step() { log.Add("step"); return inner.Step(); }
            public AdapterInfo Commit() { log.Add("commit"); return inner.Commit(); }
            public void Dispose() => inner.Dispose();
        }
    }
}
