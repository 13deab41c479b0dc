using System.Collections.Concurrent;
using SmoaServe.Engine.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Server.Tests;

/// <summary>
/// 200 uploaded LoRA adapters over two tenants on llama-a with room for 10 on the device: requests spread over all of
/// them at once answer exactly what each adapter answers alone, and the device budget holds throughout.
/// </summary>
public sealed class ManyAdaptersTests
{
    private const int Adapters = 200, DeviceBudget = 10;

    /// <summary>Random LoRA factors shaped like the fixture's (r 4 on q, v, gate of both layers), one set per seed.</summary>
    private static (byte[] Config, byte[] Weights) RandomLora(string dir, int seed)
    {
        string fixture = Path.Combine(FixturePaths.LlamaA, "lora-adapter");
        using var file = SafeTensorsFile.Open(Path.Combine(fixture, "adapter_model.safetensors"));
        using var scope = NewDisposeScope();
        var generator = new torch.Generator((ulong)(1000 + seed));
        var tensors = file.Names.Select(n =>
        {
            var shape = file.Info(n).Shape;
            return (n, torch.randn(shape, generator: generator) * 0.3f);
        }).ToList();
        string path = Path.Combine(dir, $"w{seed}.safetensors");
        SafeTensorsWriter.Write(path, tensors, new Dictionary<string, string> { ["format"] = "pt" });
        return (File.ReadAllBytes(Path.Combine(fixture, "adapter_config.json")), File.ReadAllBytes(path));
    }

    [Fact]
    public async Task Two_hundred_adapters_over_a_device_budget_of_ten_answer_as_alone()
    {
        string scratch = Path.Combine(Path.GetTempPath(), "smoa-many-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(scratch);
        try
        {
            await using var host = await TestHost.StartAsync(null, baseName: null, configureEngine: o =>
            {
                o.Model = FixturePaths.LlamaA;
                o.MaxDeviceAdapters = DeviceBudget;
                o.MaxRunning = 16;
            });
            var api = new TenantApi(host.Http);
            var tenants = new[] { await api.CreateTenant(TestHost.Key, "many-a"), await api.CreateTenant(TestHost.Key, "many-b") };
            var targets = new List<(string Key, string Model)>();
            for (int i = 0; i < Adapters; i++)
            {
                var (config, weights) = RandomLora(scratch, i);
                string key = tenants[i % 2].Key, name = $"lora-{i:D3}";
                var r = await api.Upload(key, name, config, weights);
                Assert.True(r.Status == System.Net.HttpStatusCode.Created, r.Text);
                targets.Add((key, name));
            }
            const string prompt = "One day";
            // alone: one request in flight at a time
            var alone = new List<string>();
            foreach (var (key, model) in targets) alone.Add(await api.Complete(key, model, prompt, 4));
            Assert.True(alone.Distinct().Count() >= 20, $"only {alone.Distinct().Count()} distinct answers: the adapters barely matter");

            // together: 16 clients over all adapters in a shuffled order, watching the device budget
            int maxResident = 0;
            using var stop = new CancellationTokenSource();
            var watcher = Task.Run(async () =>
            {
                while (!stop.IsCancellationRequested)
                {
                    maxResident = Math.Max(maxResident, host.Engine.Residency.DeviceCount);
                    await Task.Delay(2);
                }
            });
            var order = Enumerable.Range(0, Adapters).Concat(Enumerable.Range(0, Adapters)).OrderBy(i => (i * 7919) % 401).ToArray();
            var together = new ConcurrentDictionary<int, ConcurrentBag<string>>();
            int next = -1;
            await Task.WhenAll(Enumerable.Range(0, 16).Select(_ => Task.Run(async () =>
            {
                int k;
                while ((k = Interlocked.Increment(ref next)) < order.Length)
                {
                    int i = order[k];
                    together.GetOrAdd(i, _ => new()).Add(await api.Complete(targets[i].Key, targets[i].Model, prompt, 4));
                }
            })));
            stop.Cancel();
            await watcher;

            for (int i = 0; i < Adapters; i++)
                foreach (var answer in together[i]) Assert.True(alone[i] == answer, $"{targets[i].Model}: alone '{alone[i]}', together '{answer}'");
            Assert.InRange(maxResident, 1, DeviceBudget);
            var stats = host.Engine.Residency.Stats;
            Assert.True(stats.Loads >= Adapters, $"{stats.Loads} loads");
            Assert.True(stats.DeviceEvictions >= Adapters - DeviceBudget, $"{stats.DeviceEvictions} evictions");
        }
        finally { Directory.Delete(scratch, true); }
    }
}
