using System.Diagnostics;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using SmoaServe.Engine.Hosting;

namespace SmoaServe.Cli.Commands;

/// <summary>
/// `smoa bench serve` over tenants and the adapter store (in-process server): many stored adapters over a device
/// budget (adapter load latency and throughput), and fairness between a flooding tenant and a light one (TTFT ratio).
/// </summary>
public static class TenantBench
{
    /// <summary>Uploads <paramref name="count"/> copies of an adapter directory as one tenant, then runs the load over all of them.</summary>
    public static int StoredAdapters(WebApplication app, Uri url, string adminKey, int count, string template, int clients, int requests, int maxTokens, string prompt)
    {
        if (count < 1) throw new UsageException("--stored-adapters must be >= 1");
        var engine = app.Services.GetRequiredService<EngineHost>();
        using var admin = Client(url, adminKey);
        string key = CreateTenant(admin, "bench");
        using var tenant = Client(url, key);
        byte[] config = File.ReadAllBytes(Path.Combine(template, "adapter_config.json"));
        byte[] weights = File.ReadAllBytes(Path.Combine(template, "adapter_model.safetensors"));
        var upload = Stopwatch.StartNew();
        var models = new List<string>();
        for (int i = 0; i < count; i++)
        {
            string name = $"stored-{i:D4}";
            using var form = new MultipartFormDataContent
            {
                { new StringContent(name), "name" },
                { new ByteArrayContent(config), "adapter_config.json", "adapter_config.json" },
                { new ByteArrayContent(weights), "adapter_model.safetensors", "adapter_model.safetensors" },
            };
            using var resp = tenant.PostAsync("/v1/adapters", form).GetAwaiter().GetResult();
            if (!resp.IsSuccessStatusCode) throw new InvalidOperationException($"upload {name}: {(int)resp.StatusCode} {resp.Content.ReadAsStringAsync().GetAwaiter().GetResult()}");
            models.Add(name);
        }
        upload.Stop();
        var budget = engine.Residency.Options.MaxDeviceAdapters;
        Console.WriteLine($"server {url}  {count} adapters uploaded in {upload.Elapsed.TotalSeconds:F2} s ({count / upload.Elapsed.TotalSeconds:F1}/s), " +
                          $"device budget {(budget is { } b ? b + " adapters" : "unlimited")}, prompt '{prompt}' max_tokens {maxTokens}");
        ServeBench.RunLoad(tenant, models.Take(Math.Min(4, count)).ToList(), 2, 4, 2, prompt).GetAwaiter().GetResult(); // JIT warm-up, not reported
        var before = engine.Residency.Stats;
        var figures = ServeBench.RunLoad(tenant, models, clients, Math.Max(requests, count), maxTokens, prompt).GetAwaiter().GetResult();
        var after = engine.Residency.Stats;
        var loads = after.LoadSeconds.Skip(before.LoadSeconds.Count).Select(s => s * 1000).ToList();
        var copies = after.CopySeconds.Skip(before.CopySeconds.Count).Select(s => s * 1000).ToList();
        Console.WriteLine(figures with { Models = $"{count} stored adapters" });
        Console.WriteLine($"adapter loads {after.Loads - before.Loads}, device evictions {after.DeviceEvictions - before.DeviceEvictions}, " +
                          $"host evictions {after.HostEvictions - before.HostEvictions}; load latency (first request → on the device) " +
                          $"p50 {ServeBench.Percentile(loads, 50):F1} ms p99 {ServeBench.Percentile(loads, 99):F1} ms max {(loads.Count > 0 ? loads.Max() : double.NaN):F1} ms; " +
                          $"device copy alone p50 {ServeBench.Percentile(copies, 50):F2} ms p99 {ServeBench.Percentile(copies, 99):F2} ms");
        return 0;
    }

    /// <summary>Tenant B's time to first token idle and while tenant A keeps <paramref name="flood"/> streams busy.</summary>
    public static int Fairness(WebApplication app, Uri url, string adminKey, int flood, int requests, int maxTokens, string prompt)
    {
        if (flood < 1) throw new UsageException("--fairness must be >= 1");
        using var admin = Client(url, adminKey);
        using var a = Client(url, CreateTenant(admin, "flood"));
        using var b = Client(url, CreateTenant(admin, "light"));
        string model = JsonDocument.Parse(admin.GetStringAsync("/v1/models").GetAwaiter().GetResult()).RootElement.GetProperty("data")[0].GetProperty("id").GetString()!;
        Console.WriteLine($"server {url}  model {model}  tenant A: {flood} streams of {maxTokens} tokens; tenant B: {requests} requests one at a time");
        ServeBench.RunLoad(b, [model], 2, 4, 2, prompt).GetAwaiter().GetResult(); // warm-up

        var idle = BTtft(b, model, requests, maxTokens, prompt);
        using var stop = new CancellationTokenSource();
        long aTokens = 0;
        var flooders = Enumerable.Range(0, flood).Select(_ => Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
                if (await ServeBench.StreamOne(a, model, prompt, maxTokens) is { } r) Interlocked.Add(ref aTokens, r.Tokens);
        })).ToList();
        var engine = app.Services.GetRequiredService<EngineHost>();
        var wait = Stopwatch.StartNew();
        while (engine.Scheduler.Snapshot.Running < Math.Min(flood, engine.Scheduler.MaxRunning) && wait.Elapsed < TimeSpan.FromSeconds(60)) Thread.Sleep(10);
        var flooded = BTtft(b, model, requests, maxTokens, prompt);
        var snapshot = engine.Scheduler.Snapshot;
        stop.Cancel();
        Task.WaitAll(flooders.ToArray());
        double idleP50 = ServeBench.Percentile(idle, 50), floodP50 = ServeBench.Percentile(flooded, 50);
        Console.WriteLine($"B idle: TTFT p50 {idleP50:F1} ms p99 {ServeBench.Percentile(idle, 99):F1} ms");
        Console.WriteLine($"B under A's flood: TTFT p50 {floodP50:F1} ms p99 {ServeBench.Percentile(flooded, 99):F1} ms " +
                          $"(A: {snapshot.RunningByOwner.Values.DefaultIfEmpty().Max()} running, {snapshot.Waiting} waiting; {engine.Scheduler.Preemptions} preemptions; {aTokens} tokens)");
        Console.WriteLine($"fairness: B's TTFT under flood / idle = {floodP50 / idleP50:F2}x (p50), {ServeBench.Percentile(flooded, 99) / ServeBench.Percentile(idle, 99):F2}x (p99)");
        return 0;
    }

    private static List<double> BTtft(HttpClient b, string model, int requests, int maxTokens, string prompt)
    {
        var ttft = new List<double>();
        for (int i = 0; i < requests; i++)
            if (ServeBench.StreamOne(b, model, prompt, Math.Min(maxTokens, 8)).GetAwaiter().GetResult() is { } r) ttft.Add(r.TtftMs);
        return ttft;
    }

    private static string CreateTenant(HttpClient admin, string prefix)
    {
        string name = $"{prefix}-{Guid.NewGuid().ToString("N")[..6]}";
        using var resp = admin.PostAsync("/admin/tenants", new StringContent(JsonSerializer.Serialize(new { name }), Encoding.UTF8, "application/json"))
            .GetAwaiter().GetResult();
        string text = resp.Content.ReadAsStringAsync().GetAwaiter().GetResult();
        if (!resp.IsSuccessStatusCode) throw new InvalidOperationException($"create tenant: {(int)resp.StatusCode} {text}");
        return JsonDocument.Parse(text).RootElement.GetProperty("api_key").GetString()!;
    }

    private static HttpClient Client(Uri url, string key)
    {
        var http = new HttpClient { BaseAddress = url, Timeout = TimeSpan.FromMinutes(30) };
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", key);
        return http;
    }
}
