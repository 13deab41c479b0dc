using SmoaServe.Engine.Generation;
using SmoaServe.Engine.Hosting;
using SmoaServe.Engine.Scheduling;

namespace SmoaServe.Engine.Tests;

/// <summary>Adapters load on first use within a device budget (LRU, pins, never under running rows).</summary>
public sealed class ResidencyTests : IDisposable
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);
    private readonly string _root = Path.Combine(Path.GetTempPath(), "smoa-residency-" + Guid.NewGuid().ToString("N"));

    public ResidencyTests() => Directory.CreateDirectory(_root);
    public void Dispose() => Directory.Delete(_root, true);

    private string AdapterDir(string name)
    {
        string dir = Path.Combine(_root, name);
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "adapter_config.json"), "{}");
        return dir;
    }

    private static GenerationRequest Greedy(IReadOnlyList<int> prompt, int maxTokens, string? adapter) => new()
    {
        PromptIds = prompt, AdapterId = adapter,
        Sampling = new SamplingParams { Temperature = 0, MaxTokens = maxTokens, StopTokenIds = new HashSet<int>() },
    };

    private static List<int> Expected(IReadOnlyList<int> prompt, int n, string? adapter)
    {
        var seq = prompt.ToList();
        var result = new List<int>();
        for (int i = 0; i < n; i++) { int t = FakeRunner.PredictByHash(seq, adapter); result.Add(t); seq.Add(t); }
        return result;
    }

    private static async Task<(List<int> Tokens, GenerationOutput End)> Collect(GenerationStream s)
    {
        var tokens = new List<int>();
        await foreach (var o in s.Outputs.ReadAllAsync().WithCancellation(new CancellationTokenSource(Timeout).Token))
        {
            if (!o.IsToken) return (tokens, o);
            tokens.Add(o.Token);
        }
        throw new InvalidOperationException("no end");
    }

    private static async Task<EngineHost> Start(FakeBackend backend, ResidencyOptions residency)
    {
        var host = new EngineHost(FakeBackend.Spec(backend), new SchedulerOptions { MaxQueued = 500 }, residency: residency);
        await host.Ready;
        return host;
    }

    private static readonly int[] PromptIds = [40, 41, 42, 43];

    [Fact]
    public async Task Many_adapters_over_a_small_device_budget_answer_as_alone_and_never_exceed_it()
    {
        var backend = new FakeBackend(new FakeRunner(slots: 4));
        using var host = await Start(backend, new ResidencyOptions { MaxDeviceAdapters = 3 });
        var ids = Enumerable.Range(0, 12).Select(i => $"t1/a{i}").ToList();
        foreach (var id in ids) await host.RegisterAdapterAsync(id, AdapterDir(id.Replace('/', '_')));
        Assert.Equal(0, host.Residency.DeviceCount);

        var streams = Enumerable.Range(0, 48).Select(i => (Id: ids[i % ids.Count], Stream: host.Scheduler.Submit(Greedy(PromptIds, 6, ids[i % ids.Count])))).ToList();
        int maxSeen = 0;
        foreach (var (id, stream) in streams)
        {
            var (tokens, end) = await Collect(stream);
            Assert.True(end.Finish == FinishReason.Length, end.Error);
            Assert.Equal(Expected(PromptIds, 6, id), tokens);
            maxSeen = Math.Max(maxSeen, host.Residency.DeviceCount);
        }
        Assert.InRange(maxSeen, 1, 3);
        var stats = host.Residency.Stats;
        Assert.True(stats.Loads >= 12, $"{stats.Loads} loads");
        Assert.True(stats.DeviceEvictions >= 9, $"{stats.DeviceEvictions} evictions");
        Assert.Equal(stats.Loads, stats.LoadSeconds.Count);
        // the host tier kept every definition: each directory was read once
        Assert.Equal(12, backend.Reads);
    }

    [Fact]
    public async Task A_cold_adapter_waits_for_its_read_while_other_rows_go_on()
    {
        var backend = new FakeBackend(new FakeRunner(slots: 4) { StepDelay = TimeSpan.FromMilliseconds(2) }) { ReadGate = new SemaphoreSlim(0) };
        using var host = await Start(backend, new ResidencyOptions());
        await host.RegisterAdapterAsync("cold", AdapterDir("cold"));
        using var release = new Releaser(backend.ReadGate);
        var cold = host.Scheduler.Submit(Greedy(PromptIds, 3, "cold"));
        var warm = host.Scheduler.Submit(Greedy([50, 51], 30, null));
        var (warmTokens, warmEnd) = await Collect(warm);   // the base row runs to the end while the read is held
        Assert.Equal(Expected([50, 51], 30, null), warmTokens);
        Assert.False(cold.Outputs.TryPeek(out _));
        Assert.Equal(AdapterTier.Disk, host.Residency.List().Single().Tier);
        backend.ReadGate.Release(10);
        var (coldTokens, coldEnd) = await Collect(cold);
        Assert.True(coldEnd.Finish == FinishReason.Length, coldEnd.Error);
        Assert.Equal(Expected(PromptIds, 3, "cold"), coldTokens);
        Assert.Equal(AdapterTier.Device, host.Residency.List().Single().Tier);
    }

    [Fact]
    public async Task Pinned_and_in_use_adapters_are_not_evicted()
    {
        var runner = new FakeRunner(slots: 4) { DecodeGate = new SemaphoreSlim(0) };
        var backend = new FakeBackend(runner);
        using var host = await Start(backend, new ResidencyOptions { MaxDeviceAdapters = 2 });
        await host.RegisterAdapterAsync("pinned", AdapterDir("pinned"), pinned: true);
        foreach (var n in new[] { "busy", "other" }) await host.RegisterAdapterAsync(n, AdapterDir(n));

        var first = host.Scheduler.Submit(Greedy(PromptIds, 1, "pinned"));
        await Collect(first);  // one token: prefill only
        using var release = new Releaser(runner);
        var busy = host.Scheduler.Submit(Greedy(PromptIds, 3, "busy"));           // holds "busy" on the device (decode blocked)
        for (int i = 0; i < 400 && !runner.HasAdapter("busy"); i++) await Task.Delay(5);
        var other = host.Scheduler.Submit(Greedy(PromptIds, 1, "other"));        // no room: pinned + busy fill the budget
        await Task.Delay(200);
        Assert.False(runner.HasAdapter("other"));
        Assert.True(runner.HasAdapter("pinned"));
        runner.DecodeGate.Release(1000);
        Assert.Equal(FinishReason.Length, (await Collect(busy)).End.Finish);
        Assert.Equal(FinishReason.Length, (await Collect(other)).End.Finish);  // "busy" left once idle
        Assert.True(runner.HasAdapter("pinned"));
        Assert.False(runner.HasAdapter("busy"));
    }

    [Fact]
    public async Task A_removed_adapter_serves_its_running_rows_then_leaves_and_queued_ones_end()
    {
        // decode steps pass one permit at a time: the removal runs between two steps of the running row
        var gate = new SemaphoreSlim(0);
        var runner = new FakeRunner(slots: 1) { DecodeGate = gate };
        using var host = await Start(new FakeBackend(runner), new ResidencyOptions());
        await host.RegisterAdapterAsync("x", AdapterDir("x"));
        using var release = new Releaser(gate);
        var running = host.Scheduler.Submit(Greedy(PromptIds, 60, "x"));
        for (int i = 0; i < 2000 && !runner.Log.Contains("D1"); i++) await Task.Delay(5); // blocked in its first decode
        var queued = host.Scheduler.Submit(Greedy([60], 4, "x"));
        var removal = host.RemoveAdapterAsync("x");
        gate.Release(1);
        Assert.True(await removal);
        Assert.True(runner.HasAdapter("x")); // the running row keeps it on the device
        Assert.False(host.Residency.IsRegistered("x"));
        gate.Release(1000);
        var (tokens, end) = await Collect(running);
        Assert.Equal(FinishReason.Length, end.Finish);
        Assert.Equal(Expected(PromptIds, 60, "x"), tokens);
        Assert.Equal(FinishReason.Error, (await Collect(queued)).End.Finish);
        for (int i = 0; i < 100 && runner.HasAdapter("x"); i++) await Task.Delay(10);
        Assert.False(runner.HasAdapter("x"));
    }

    [Fact]
    public async Task A_directory_that_fails_to_read_ends_its_requests_with_the_reason()
    {
        var backend = new FakeBackend(new FakeRunner());
        using var host = await Start(backend, new ResidencyOptions());
        string dir = AdapterDir("broken");
        File.Delete(Path.Combine(dir, "adapter_config.json"));
        await host.RegisterAdapterAsync("broken", dir);
        var (_, end) = await Collect(host.Scheduler.Submit(Greedy(PromptIds, 2, "broken")));
        Assert.Equal(FinishReason.Error, end.Finish);
        Assert.Contains("adapter_config.json", end.Error);
    }

    /// <summary>Opens a gate when the test ends, pass or fail (a model thread blocked on it would hang the dispose).</summary>
    private sealed class Releaser(SemaphoreSlim? gate) : IDisposable
    {
        public Releaser(FakeRunner runner) : this(runner.DecodeGate) { }
        public void Dispose() => gate?.Release(10000);
    }
}
