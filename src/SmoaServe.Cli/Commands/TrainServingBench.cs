using System.Diagnostics;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.DependencyInjection;
using SmoaServe.Server;

namespace SmoaServe.Cli.Commands;

/// <summary>
/// `smoa bench train --serving --model DIR`: what a fine-tuning job costs the requests served beside it. An in-process
/// server on the checkpoint answers the same streaming load twice, idle and while a fine-tuning job (uploaded and
/// started through the API) trains on the same model thread, and reports both inter-token latencies, their ratio, and
/// the job's own training tokens/s — all from one run.
/// </summary>
internal static class TrainServingBench
{
    public const string Usage = """
        usage: smoa bench train --serving --model DIR [--clients N] [--requests N] [--max-tokens N] [--method smoa|lora]
                 [--r R] [--num-blocks K] [--batch-size B] [--micro-batch-size M] [--examples N] [--json] [--device cpu|cuda]

          --clients / --requests / --max-tokens   the streaming load (default 4 clients, 32 requests, 64 tokens)
          --method, --r, --num-blocks             the job's adapter (default smoa, r 8, K 2; all seven projections)
          --batch-size B / --micro-batch-size M   the job's batch, and the rows of one forward (one model-thread slice)
          --examples N                            synthetic chat pairs in the training file (default 64)
          --serving-share S                       the job's share of the model thread while requests run (default 0.5; 1 = none kept back)
        """;

    public static int Run(string[] args)
    {
        var a = CliArgs.Parse(args, ["model", "clients", "requests", "max-tokens", "method", "r", "num-blocks", "batch-size", "micro-batch-size", "examples", "device", "serving-share"],
            ["serving", "json"]);
        if (a.Help) { Console.WriteLine(Usage); return 0; }
        string model = a.Required("model");
        int clients = a.GetInt("clients", 4), requests = a.GetInt("requests", 32), maxTokens = a.GetInt("max-tokens", 64);
        int examples = a.GetInt("examples", 64), batch = a.GetInt("batch-size", 8), micro = a.GetInt("micro-batch-size", 8);
        if (clients < 1 || requests < 1 || maxTokens < 1 || examples < 1 || batch < 1 || micro < 1) throw new UsageException("counts must be >= 1");
        string method = a.Get("method") ?? "smoa";
        if (method is not ("smoa" or "lora")) throw new UsageException("--method smoa|lora");
        bool json = a.Flag("json");
        var log = json ? Console.Error : Console.Out;

        string key = "bench-" + Guid.NewGuid().ToString("N");
        string data = Path.Combine(Path.GetTempPath(), "smoa-bench-train-serving-" + Guid.NewGuid().ToString("N"));
        var app = SmoaServer.Build([new("Serilog:MinimumLevel:Default", "Warning"), new("Smoa:Urls", "http://127.0.0.1:0")], o =>
        {
            o.AdminKey = key;
            o.AdaptersDir = Path.Combine(data, "no-adapters");
            o.FineTuneMicroBatchSize = micro;
            o.FineTuneCheckpointSteps = 1_000_000;
            o.FineTuneMetricsEvents = 1000;   // the job's trained_tokens advance every 8 steps
            o.FineTuneServingShare = a.GetDouble("serving-share", 0.5);
        }, null, o =>
        {
            o.Model = model;
            o.Data = data;
            o.MaxRunning = Math.Max(clients, 1);
            if (a.Get("device") is { } d) o.Device = d;
        });
        try
        {
            app.StartAsync().GetAwaiter().GetResult();
            app.Services.GetRequiredService<ServerStatus>().Loaded.GetAwaiter().GetResult();
            using var http = new HttpClient { BaseAddress = SmoaServer.BoundAddress(app), Timeout = TimeSpan.FromMinutes(30) };
            http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", key);
            string baseId = app.Services.GetRequiredService<ServerStatus>().BaseModelId;
            string prompt = "The history of the city begins with a small settlement by the river, where";
            string[] models = [baseId];

            ServeBench.RunLoad(http, models, clients, clients, 4, prompt).GetAwaiter().GetResult();   // warm-up
            var idle = ServeBench.RunLoad(http, models, clients, requests, maxTokens, prompt).GetAwaiter().GetResult();
            log.WriteLine($"idle:        {idle}");

            string jobId = StartJob(http, baseId, method, a, examples, batch);
            WaitForStatus(http, jobId, "running");
            var (tokens0, clock0) = Progress(http, jobId);
            var busy = ServeBench.RunLoad(http, models, clients, requests, maxTokens, prompt).GetAwaiter().GetResult();
            var (tokens1, clock1) = Progress(http, jobId);
            Thread.Sleep(TimeSpan.FromSeconds(Math.Clamp(clock1 - clock0, 1, 10)));   // the job alone for as long as the load took
            var (tokens2, clock2) = Progress(http, jobId);
            var stepRates = Metrics(http, jobId).Select(m => m["tokens_per_s"]!.GetValue<double>()).OrderBy(x => x).ToList();
            http.PostAsync($"/v1/fine_tuning/jobs/{jobId}/cancel", null).GetAwaiter().GetResult();
            log.WriteLine($"with a job:  {busy}");
            double trainingWhileServing = (tokens1 - tokens0) / (clock1 - clock0), trainingAlone = (tokens2 - tokens1) / (clock2 - clock1);
            double stepRate = stepRates.Count > 0 ? stepRates[stepRates.Count / 2] : double.NaN;
            log.WriteLine($"inter-token latency p50 {idle.ItlP50Ms:F1} → {busy.ItlP50Ms:F1} ms (x{busy.ItlP50Ms / idle.ItlP50Ms:F2}), p99 {idle.ItlP99Ms:F1} → {busy.ItlP99Ms:F1} ms (x{busy.ItlP99Ms / idle.ItlP99Ms:F2}); " +
                          $"serving {idle.TokensPerSecond:F1} → {busy.TokensPerSecond:F1} tok/s; the job trained {trainingWhileServing:F0} tokens/s during the load, " +
                          $"{trainingAlone:F0} tokens/s alone afterwards ({stepRate:F0} tokens/s within a step, median)");
            if (json)
                Console.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object?>
                {
                    ["itl_p50_ms_idle"] = Math.Round(idle.ItlP50Ms, 3), ["itl_p99_ms_idle"] = Math.Round(idle.ItlP99Ms, 3),
                    ["itl_p50_ms_training"] = Math.Round(busy.ItlP50Ms, 3), ["itl_p99_ms_training"] = Math.Round(busy.ItlP99Ms, 3),
                    ["itl_p50_ratio"] = Math.Round(busy.ItlP50Ms / idle.ItlP50Ms, 3), ["itl_p99_ratio"] = Math.Round(busy.ItlP99Ms / idle.ItlP99Ms, 3),
                    ["serving_tokens_per_s_idle"] = Math.Round(idle.TokensPerSecond, 1), ["serving_tokens_per_s_training"] = Math.Round(busy.TokensPerSecond, 1),
                    ["training_tokens_per_s_while_serving"] = Math.Round(trainingWhileServing, 1), ["training_tokens_per_s_alone"] = Math.Round(trainingAlone, 1),
                    ["training_tokens_per_s_within_step"] = Math.Round(stepRate, 1),
                    ["errors"] = idle.Errors + busy.Errors, ["method"] = method, ["batch_size"] = batch, ["micro_batch_size"] = micro, ["serving_share"] = a.GetDouble("serving-share", 0.5),
                }));
            return 0;
        }
        finally
        {
            app.StopAsync().GetAwaiter().GetResult();
            app.DisposeAsync().AsTask().GetAwaiter().GetResult();
            try { Directory.Delete(data, true); } catch (IOException) { }
        }
    }

    /// <summary>Uploads N chat pairs and starts a job long enough to outlast the load (cancelled afterwards).</summary>
    private static string StartJob(HttpClient http, string baseId, string method, CliArgs a, int examples, int batch)
    {
        var rng = new Random(1);
        var lines = Enumerable.Range(0, examples).Select(i =>
            JsonSerializer.Serialize(new { messages = new object[] { new { role = "user", content = $"Repeat the number {rng.Next(1_000_000)} in words." }, new { role = "assistant", content = $"The number is {i} and it is {rng.Next(1000)}." } } }));
        var form = new MultipartFormDataContent { { new StringContent("fine-tune"), "purpose" } };
        form.Add(new ByteArrayContent(Encoding.UTF8.GetBytes(string.Join("\n", lines))), "file", "bench.jsonl");
        var file = Post(http, "/v1/files", form);
        var hyper = new JsonObject { ["n_epochs"] = 1000, ["batch_size"] = batch, ["r"] = a.GetInt("r", 8) };
        if (method == "smoa") hyper["num_blocks"] = a.GetInt("num-blocks", 2);
        var body = new JsonObject
        {
            ["model"] = baseId, ["training_file"] = (string)file["id"]!,
            ["method"] = new JsonObject { ["type"] = method, [method] = new JsonObject { ["hyperparameters"] = hyper } },
        };
        return (string)Post(http, "/v1/fine_tuning/jobs", new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json"))["id"]!;
    }

    private static JsonNode Post(HttpClient http, string path, HttpContent content)
    {
        using var resp = http.PostAsync(path, content).GetAwaiter().GetResult();
        string text = resp.Content.ReadAsStringAsync().GetAwaiter().GetResult();
        if (!resp.IsSuccessStatusCode) throw new InvalidOperationException($"{path}: {(int)resp.StatusCode} {text}");
        return JsonNode.Parse(text)!;
    }

    private static string Status(HttpClient http, string jobId) =>
        (string)JsonNode.Parse(http.GetStringAsync($"/v1/fine_tuning/jobs/{jobId}").GetAwaiter().GetResult())!["status"]!;

    private static void WaitForStatus(HttpClient http, string jobId, string wanted)
    {
        var clock = Stopwatch.StartNew();
        while (Status(http, jobId) is var s && s != wanted)
        {
            if (s is "failed" or "cancelled" or "succeeded") throw new InvalidOperationException($"job {jobId} {s}: " + http.GetStringAsync($"/v1/fine_tuning/jobs/{jobId}").GetAwaiter().GetResult());
            if (clock.Elapsed > TimeSpan.FromMinutes(10)) throw new TimeoutException($"job {jobId} is still {s}");
            Thread.Sleep(50);
        }
        // its first step has run, so the load meets the job in its steady state
        while (Metrics(http, jobId).Count == 0) Thread.Sleep(50);
    }

    /// <summary>The job's trained tokens (advanced at its metrics events) and the time they were read.</summary>
    private static (double Tokens, double Seconds) Progress(HttpClient http, string jobId)
    {
        var job = JsonNode.Parse(http.GetStringAsync($"/v1/fine_tuning/jobs/{jobId}").GetAwaiter().GetResult())!;
        return ((double?)job["trained_tokens"] ?? 0, Stopwatch.GetTimestamp() / (double)Stopwatch.Frequency);
    }

    private static List<JsonNode> Metrics(HttpClient http, string jobId) =>
        JsonNode.Parse(http.GetStringAsync($"/v1/fine_tuning/jobs/{jobId}/events?limit=100").GetAwaiter().GetResult())!["data"]!.AsArray()
            .Where(e => (string?)e!["type"] == "metrics").Select(e => e!["data"]!).ToList();
}
