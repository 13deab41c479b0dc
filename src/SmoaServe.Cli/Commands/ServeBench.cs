using System.Diagnostics;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using SmoaServe.Engine.Hosting;
using SmoaServe.Platform.Adapters;
using SmoaServe.Server;

namespace SmoaServe.Cli.Commands;

/// <summary>
/// `smoa bench serve`, the load benchmark: N concurrent streaming clients send completions spread
/// round-robin over several models (base and/or adapters) to a running server, or to an in-process one started
/// with --model; reports throughput and p50/p99 time to first token and inter-token latency, then (with
/// --compare-single) the same load on the first model alone.
/// </summary>
public static class ServeBench
{
    public const string Usage = """
        usage: smoa bench serve (--url URL | --model DIR [--adapter NAME=DIR ...] | --synthetic SPEC --tokenizer DIR) [options]

          --url URL              a running server (key from --api-key or SMOA_ADMIN_KEY)
          --model DIR            start an in-process server on this checkpoint instead (with --adapter NAME=DIR ...)
          --synthetic SPEC       in-process server on a random Llama (hidden=H,layers=L,heads=NH,kv_heads=NKV,ffn=F,vocab=V)
                                 with --synthetic-adapters N random adapters syn-0.. (--adapter-kind smoa|lora, --r, --num-blocks,
                                 --target-modules, default smoa r 16, 4 blocks, q,k,v,o); --tokenizer DIR gives the text side
          --models A,B,...       model ids to spread the requests over (default: every model the server lists)
          --clients N            concurrent streaming clients (default 8)
          --requests N           requests in total (default 4 x clients)
          --max-tokens N         tokens per request, EOS ignored (default 64)
          --prompt TEXT          prompt (default: a short English sentence)
          --max-running N        in-process server: KV slots (default 16)
          --compare-single       run the same load again with every request on one model
          --single-model ID      the model for --compare-single (default: the first of --models)

        tenants and the adapter store (in-process server with --model):
          --stored-adapters N    upload N copies of --adapter-template DIR through the API (one tenant) and spread the load
                                 over all of them; reports adapter load latency p50/p99 (first request → on the device),
                                 loads, evictions and throughput
          --max-device-adapters M  device budget in adapters (default: no limit)
          --fairness N           tenant A keeps N streams busy while tenant B sends --requests requests one at a time;
                                 reports B's time to first token idle and under A's flood, and their ratio
          --no-fair-share        in-process server: first come, first served (for comparison)
        """;

    public sealed record Figures(string Models, int Clients, int Requests, int Errors, long Tokens, double Seconds,
        double TtftP50Ms, double TtftP99Ms, double ItlP50Ms, double ItlP99Ms)
    {
        public double TokensPerSecond => Tokens / Seconds;
        public override string ToString() =>
            $"models={Models} clients={Clients} requests={Requests} errors={Errors}: {Tokens} tokens in {Seconds:F2} s = {TokensPerSecond:F1} tok/s; " +
            $"TTFT p50 {TtftP50Ms:F1} ms p99 {TtftP99Ms:F1} ms; ITL p50 {ItlP50Ms:F1} ms p99 {ItlP99Ms:F1} ms";
    }

    public static int Run(string[] args)
    {
        var cli = CliArgs.Parse(args, ["url", "api-key", "model", "adapter", "models", "clients", "requests", "max-tokens", "prompt", "max-running", "single-model",
            "synthetic", "tokenizer", "synthetic-adapters", "adapter-kind", "r", "num-blocks", "target-modules",
            "stored-adapters", "adapter-template", "max-device-adapters", "fairness"],
            ["compare-single", "no-fair-share"]);
        if (cli.Help) { Console.WriteLine(Usage); return 0; }
        if ((cli.Has("url") ? 1 : 0) + (cli.Has("model") ? 1 : 0) + (cli.Has("synthetic") ? 1 : 0) != 1)
            throw new UsageException("give exactly one of --url, --model and --synthetic");
        int clients = cli.GetInt("clients", 8), requests = cli.GetInt("requests", 4 * clients), maxTokens = cli.GetInt("max-tokens", 64);
        if (clients < 1 || requests < 1 || maxTokens < 1) throw new UsageException("--clients, --requests and --max-tokens must be >= 1");
        string prompt = cli.Get("prompt") ?? "The history of the city begins with a small settlement by the river, where";

        WebApplication? app = null;
        Uri url;
        string key;
        if (!cli.Has("url"))
        {
            var adapters = cli.All("adapter").Select(a => a.Split('=', 2)).ToList();
            if (adapters.Any(a => a.Length != 2 || a[0].Length == 0)) throw new UsageException("--adapter expects NAME=DIR");
            key = "loadtest-" + Guid.NewGuid().ToString("N");
            int slots = cli.GetInt("max-running", 16);
            EngineSetup? synthetic = cli.Get("synthetic") is { } spec
                ? SyntheticEngine.Setup(spec, cli.Get("tokenizer") ?? throw new UsageException("--synthetic needs --tokenizer DIR"), slots, maxSequenceLength: 1024)
                : null;
            app = SmoaServer.Build([new("Serilog:MinimumLevel:Default", "Warning"), new("Smoa:Urls", "http://127.0.0.1:0")], o =>
            {
                o.ServedModelName = synthetic is null ? null : "synthetic";
                o.AdminKey = key;
                o.AdaptersDir = Path.Combine(Path.GetTempPath(), "smoa-loadtest-none");
                foreach (var a in adapters) o.Adapters[a[0]] = a[1];
            }, synthetic, o =>
            {
                o.Model = cli.Get("model");
                o.MaxRunning = slots;
                o.Data = Path.Combine(Path.GetTempPath(), "smoa-loadtest-data-" + Guid.NewGuid().ToString("N"));
                if (cli.Has("max-device-adapters")) o.MaxDeviceAdapters = cli.GetInt("max-device-adapters", 0);
                if (cli.Flag("no-fair-share")) o.FairShare = false;
            });
            app.StartAsync().GetAwaiter().GetResult();
            app.Services.GetRequiredService<ServerStatus>().Loaded.GetAwaiter().GetResult();
            if (synthetic is not null) RegisterSyntheticAdapters(app, SyntheticAdapterConfig(cli), cli.GetInt("synthetic-adapters", 4)).GetAwaiter().GetResult();
            url = SmoaServer.BoundAddress(app);
        }
        else
        {
            url = new Uri(cli.Get("url")!);
            key = cli.Get("api-key") ?? Environment.GetEnvironmentVariable("SMOA_ADMIN_KEY") ?? "";
        }
        try
        {
            using var http = new HttpClient { BaseAddress = url, Timeout = TimeSpan.FromMinutes(30) };
            http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", key);
            if (cli.Has("stored-adapters") || cli.Has("fairness"))
            {
                if (app is null) throw new UsageException("--stored-adapters and --fairness run an in-process server: give --model");
                return cli.Has("fairness")
                    ? TenantBench.Fairness(app, url, key, cli.GetInt("fairness", 64), requests, maxTokens, prompt)
                    : TenantBench.StoredAdapters(app, url, key, cli.GetInt("stored-adapters", 200),
                        cli.Get("adapter-template") ?? throw new UsageException("--stored-adapters needs --adapter-template DIR"), clients, requests, maxTokens, prompt);
            }
            var models = cli.Get("models")?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries) ?? ListModels(http);
            Console.WriteLine($"server {url}  prompt '{prompt}'  max_tokens {maxTokens}");
            RunLoad(http, models, models.Length, models.Length, 4, prompt).GetAwaiter().GetResult(); // warm-up (JIT, first-use costs), not reported
            Console.WriteLine(RunLoad(http, models, clients, requests, maxTokens, prompt).GetAwaiter().GetResult());
            if (cli.Flag("compare-single"))
                Console.WriteLine(RunLoad(http, [cli.Get("single-model") ?? models[0]], clients, requests, maxTokens, prompt).GetAwaiter().GetResult());
            return 0;
        }
        finally
        {
            if (app is not null)
            {
                string data = app.Services.GetRequiredService<Microsoft.Extensions.Options.IOptions<EngineOptions>>().Value.DataDirectory;
                app.StopAsync().GetAwaiter().GetResult();
                app.DisposeAsync().AsTask().GetAwaiter().GetResult();
                try { Directory.Delete(data, recursive: true); } catch (IOException) { }
            }
        }
    }

    /// <summary>Random adapters syn-0..syn-{N-1}, created on the model thread and registered like any other adapter.</summary>
    private static async Task RegisterSyntheticAdapters(WebApplication app, Engine.Adapters.AdapterConfig config, int count)
    {
        var engine = app.Services.GetRequiredService<EngineHost>();
        var adapters = app.Services.GetRequiredService<AdapterService>();
        for (int i = 0; i < count; i++)
        {
            using var definition = await SyntheticEngine.CreateRandomAdapterAsync(engine, config, seed: 1000 + i);
            await adapters.RegisterAsync($"syn-{i}", AdapterSource.FromDefinition(definition), AdapterOrigin.BuiltIn);
        }
    }

    private static Engine.Adapters.AdapterConfig SyntheticAdapterConfig(CliArgs cli)
    {
        var targets = (cli.Get("target-modules") ?? "q_proj,k_proj,v_proj,o_proj").Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
            .Select(t => Engine.Model.ProjectionNames.TryParse(t, out var p) ? p : throw new UsageException($"--target-modules: unknown module '{t}'"))
            .ToList();
        int r = cli.GetInt("r", 16), blocks = cli.GetInt("num-blocks", 4);
        return (cli.Get("adapter-kind") ?? "smoa") switch
        {
            "smoa" => Engine.Adapters.AdapterConfig.Smoa(r, blocks, 2.0 * r, targets),
            "lora" => Engine.Adapters.AdapterConfig.Lora(r, 2.0 * r, targets),
            var k => throw new UsageException($"--adapter-kind: expected smoa or lora, got '{k}'"),
        };
    }

    private static string[] ListModels(HttpClient http)
    {
        using var doc = JsonDocument.Parse(http.GetStringAsync("/v1/models").GetAwaiter().GetResult());
        return doc.RootElement.GetProperty("data").EnumerateArray().Select(m => m.GetProperty("id").GetString()!).ToArray();
    }

    /// <summary>Runs the load once: request i goes to models[i % n]; clients pull requests from a shared counter.</summary>
    public static async Task<Figures> RunLoad(HttpClient http, IReadOnlyList<string> models, int clients, int requests, int maxTokens, string prompt)
    {
        var ttft = new List<double>();
        var itl = new List<double>();
        long tokens = 0;
        int errors = 0, next = -1;
        var wall = Stopwatch.StartNew();
        await Task.WhenAll(Enumerable.Range(0, clients).Select(_ => Task.Run(async () =>
        {
            int i;
            while ((i = Interlocked.Increment(ref next)) < requests)
            {
                var r = await StreamOne(http, models[i % models.Count], prompt, maxTokens);
                lock (ttft)
                {
                    if (r is null) { errors++; continue; }
                    ttft.Add(r.Value.TtftMs);
                    itl.AddRange(r.Value.GapsMs);
                    tokens += r.Value.Tokens;
                }
            }
        })));
        wall.Stop();
        return new Figures(string.Join(",", models), clients, requests, errors, tokens, wall.Elapsed.TotalSeconds,
            Percentile(ttft, 50), Percentile(ttft, 99), Percentile(itl, 50), Percentile(itl, 99));
    }

    /// <summary>One streaming completion: time to the first text chunk, gaps between chunks, tokens from the usage chunk.</summary>
    internal static async Task<(double TtftMs, List<double> GapsMs, int Tokens)?> StreamOne(HttpClient http, string model, string prompt, int maxTokens)
    {
        var body = JsonSerializer.Serialize(new
        {
            model, prompt, max_tokens = maxTokens, temperature = 0, stream = true, ignore_eos = true,
            stream_options = new { include_usage = true },
        });
        var sw = Stopwatch.StartNew();
        using var req = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
        using var resp = await http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead);
        if (!resp.IsSuccessStatusCode) return null;
        using var reader = new StreamReader(await resp.Content.ReadAsStreamAsync());
        double? first = null, last = null;
        var gaps = new List<double>();
        int tokens = 0;
        while (await reader.ReadLineAsync() is { } line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal) || line == "data: [DONE]") continue;
            using var chunk = JsonDocument.Parse(line.AsMemory(6));
            if (chunk.RootElement.TryGetProperty("error", out _)) return null;
            if (chunk.RootElement.TryGetProperty("usage", out var usage) && usage.ValueKind == JsonValueKind.Object)
                tokens = usage.GetProperty("completion_tokens").GetInt32();
            var choices = chunk.RootElement.GetProperty("choices");
            if (choices.GetArrayLength() == 0 || choices[0].GetProperty("text").GetString() is not { Length: > 0 }) continue;
            double now = sw.Elapsed.TotalMilliseconds;
            if (first is null) first = now;
            else gaps.Add(now - last!.Value);
            last = now;
        }
        return first is null ? null : (first.Value, gaps, tokens);
    }

    internal static double Percentile(List<double> values, double p)
    {
        if (values.Count == 0) return double.NaN;
        var sorted = values.OrderBy(v => v).ToArray();
        return sorted[Math.Clamp((int)Math.Ceiling(p / 100 * sorted.Length) - 1, 0, sorted.Length - 1)];
    }
}
