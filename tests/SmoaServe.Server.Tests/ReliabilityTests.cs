using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.DependencyInjection;
using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Checkpoints;
using SmoaServe.Engine.Hosting;
using SmoaServe.Engine.Model;
using SmoaServe.Platform.Adapters;
using Xunit.Abstractions;

namespace SmoaServe.Server.Tests;

/// <summary>llama-a served in-process with a LoRA and an SMoA adapter, for the end-to-end reliability checks.</summary>
public sealed class ReliabilityFixture : IAsyncLifetime
{
    public TestHost Host { get; private set; } = null!;
    public string AdaptersDir { get; } = Path.Combine(Path.GetTempPath(), "smoa-reliability-adapters-" + Guid.NewGuid().ToString("N"));

    public async Task InitializeAsync()
    {
        Directory.CreateDirectory(AdaptersDir);
        Host = await TestHost.StartAsync(null, o =>
        {
            o.AdaptersDir = AdaptersDir;
            o.AdaptersPollSeconds = 0.1;
            o.Adapters["smoa"] = Path.Combine(FixturePaths.LlamaA, "smoa-adapter");
            o.Adapters["lora"] = Path.Combine(FixturePaths.LlamaA, "lora-adapter");
        }, baseName: null, configureEngine: o =>
        {
            o.Model = FixturePaths.LlamaA;
            o.MaxRunning = 4;
            o.MaxPrefillChunk = 4;
        });
    }

    public async Task DisposeAsync()
    {
        await Host.DisposeAsync();
        Directory.Delete(AdaptersDir, true);
    }
}

public class ReliabilityTests(ReliabilityFixture fx, ITestOutputHelper output) : IClassFixture<ReliabilityFixture>
{
    private HttpClient Http => fx.Host.Http;

    private async Task<(HttpStatusCode Status, JsonNode? Body)> Post(string path, string json)
    {
        var resp = await Http.PostAsync(path, new StringContent(json, Encoding.UTF8, "application/json"));
        string text = await resp.Content.ReadAsStringAsync();
        return (resp.StatusCode, text.StartsWith('{') ? JsonNode.Parse(text) : null);
    }

    private static string Completion(string model) =>
        JsonSerializer.Serialize(new { model, prompt = "hello there", max_tokens = 32, temperature = 0, ignore_eos = true });

    /// <summary>
    /// The poisoning scenario through the server: the fixture LoRA with layer 0's gate_proj lora_B = 3e38. Copied into the
    /// adapters directory it is refused at load (never listed, 404). Made resident anyway (straight into the engine,
    /// past the bound), 20 trials of 8 concurrent greedy completions cycling over it ×4, the LoRA ×2, the base and the
    /// SMoA adapter give every other row exactly its solo text, and the bad rows a 500 of their own.
    /// </summary>
    [Fact]
    public async Task A_poisoned_adapter_is_refused_and_when_forced_in_changes_no_other_row()
    {
        string bad = Path.Combine(fx.AdaptersDir, "bad");
        Directory.CreateDirectory(bad);
        File.Copy(Path.Combine(FixturePaths.LlamaA, "lora-adapter", AdapterFiles.ConfigFile), Path.Combine(bad, AdapterFiles.ConfigFile));
        var view = await fx.Host.Engine.RunOnDeviceAsync(b => b.Model!.View);
        using (var poisoned = AdapterFiles.Read(Path.Combine(FixturePaths.LlamaA, "lora-adapter"), view, checkUpdateBound: false))
        {
            poisoned.Modules[(0, Projection.Gate)].B[0]!.fill_(3e38f);
            AdapterFiles.Write(Path.Combine(bad, "staging"), poisoned);
        }
        File.Move(Path.Combine(bad, "staging", AdapterFiles.WeightsFile), Path.Combine(bad, AdapterFiles.WeightsFile));
        Directory.Delete(Path.Combine(bad, "staging"), true);
        await fx.Host.App.Services.GetRequiredService<AdapterDirectoryWatcher>().PollAsync();
        await fx.Host.App.Services.GetRequiredService<AdapterDirectoryWatcher>().PollAsync();
        Assert.False(fx.Host.Adapters.Catalog.TryGet("bad", out _));
        Assert.Equal(HttpStatusCode.NotFound, (await Post("/v1/completions", Completion("bad"))).Status);

        // forced in: resident on the engine and listed, without the bound
        using (var forced = AdapterFiles.Read(bad, view, checkUpdateBound: false))
            await fx.Host.Engine.RunOnDeviceAsync(b =>
            {
                var info = b.AddAdapter("poison", forced);
                fx.Host.Engine.Residency.MarkResident("poison", null, null, info.Bytes);
                return info;
            });
        fx.Host.Adapters.Catalog.Put(new AdapterRecord("poison", "poison", AdapterOrigin.Preloaded, bad, DateTimeOffset.UtcNow,
            new AdapterDetails("lora", 4, null, ["q_proj"], 0, 0)));
        try
        {
            string[] cycle = ["poison", "lora", "poison", "llama-a", "poison", "lora", "smoa", "poison"];
            var solo = new Dictionary<string, string>();
            foreach (var m in cycle.Distinct().Where(m => m != "poison"))
            {
                var (status, body) = await Post("/v1/completions", Completion(m));
                Assert.Equal(HttpStatusCode.OK, status);
                solo[m] = (string)body!["choices"]![0]!["text"]!;
            }
            var rng = new Random(7);
            for (int trial = 0; trial < 20; trial++)
            {
                var order = cycle.OrderBy(_ => rng.Next()).ToArray();
                var results = await Task.WhenAll(order.Select(m => Post("/v1/completions", Completion(m))));
                for (int i = 0; i < order.Length; i++)
                {
                    if (order[i] == "poison")
                    {
                        Assert.Equal(HttpStatusCode.InternalServerError, results[i].Status);
                        Assert.Contains("not finite", (string?)results[i].Body!["error"]!["message"]);
                        continue;
                    }
                    Assert.True(results[i].Status == HttpStatusCode.OK, $"trial {trial} {order[i]}: {results[i].Status} {results[i].Body}");
                    Assert.Equal(solo[order[i]], (string?)results[i].Body!["choices"]![0]!["text"]);
                }
            }
        }
        finally
        {
            await fx.Host.Adapters.RemoveAsync("poison");
            Directory.Delete(bad, true);
        }
    }

    /// <summary>Four concurrent chat bodies of 3.9 MB: each a 400 (context_length_exceeded) after tokenizing a context's worth only.</summary>
    [Fact]
    public async Task Huge_prompts_are_refused_without_tokenizing_them_whole()
    {
        string content = string.Concat(Enumerable.Repeat("All work and no play makes a dull model. ", 3_900_000 / 41));
        string body = JsonSerializer.Serialize(new { model = "llama-a", messages = new[] { new { role = "user", content } } });
        string completion = JsonSerializer.Serialize(new { model = "llama-a", prompt = content });
        await Post("/v1/chat/completions", """{"model":"llama-a","messages":[{"role":"user","content":"warm up"}],"max_tokens":1}""");

        async Task<(HttpStatusCode, string?, double)> Timed(string path, string json)
        {
            var clock = Stopwatch.StartNew();
            var (status, b) = await Post(path, json);
            return (status, (string?)b?["error"]?["code"], clock.Elapsed.TotalMilliseconds);
        }
        var results = await Task.WhenAll(Enumerable.Range(0, 4).Select(i => Timed(i % 2 == 0 ? "/v1/chat/completions" : "/v1/completions", i % 2 == 0 ? body : completion)));
        output.WriteLine($"4 concurrent {body.Length / 1e6:F1} MB prompts refused in {string.Join(", ", results.Select(r => $"{r.Item3:F0} ms"))}");
        foreach (var (status, code, ms) in results)
        {
            Assert.Equal(HttpStatusCode.BadRequest, status);
            Assert.Equal("context_length_exceeded", code);
            Assert.True(ms < 2000, $"refused after {ms:F0} ms");
        }
        var tokenize = await Post("/tokenize", JsonSerializer.Serialize(new { model = "llama-a", prompt = content }));
        Assert.Equal(HttpStatusCode.BadRequest, tokenize.Status);
        // a million-element array is refused before a document is built for it; more ids than the context cannot be detokenized
        var ids = "[" + string.Join(",", Enumerable.Repeat("1", 1_000_000)) + "]";
        Assert.Equal(HttpStatusCode.BadRequest, (await Post("/detokenize", $$"""{"tokens":{{ids}}}""")).Status);
        Assert.Equal(HttpStatusCode.BadRequest, (await Post("/detokenize", JsonSerializer.Serialize(new { tokens = Enumerable.Repeat(1, 600) }))).Status);
        Assert.Equal(HttpStatusCode.OK, (await Post("/detokenize", JsonSerializer.Serialize(new { tokens = Enumerable.Repeat(1, 500) }))).Status);
    }

    [Theory]
    [InlineData("alien")]
    [InlineData("")]
    [InlineData("USER")]
    [InlineData("system ")]
    public async Task Unknown_chat_roles_are_400(string role)
    {
        foreach (var path in new[] { "/v1/chat/completions", "/tokenize" })
        {
            var (status, body) = await Post(path, JsonSerializer.Serialize(new { model = "llama-a", messages = new[] { new { role, content = "hi" } } }));
            Assert.Equal(HttpStatusCode.BadRequest, status);
            Assert.Equal("messages[0].role", (string?)body!["error"]!["param"]);
        }
    }

    /// <summary>A client that goes away before its answer is written is a cancellation: counted as 499, never as a 5xx or as the 4xx it was not sent.</summary>
    [Fact]
    public async Task A_client_that_leaves_early_is_counted_as_499_not_as_an_error()
    {
        var request = Encoding.UTF8.GetBytes(
            $"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TestHost.Key}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{\"model\":\"llama-a\",\"prompt\":\"");
        for (int i = 0; i < 5; i++)
        {
            using var client = new System.Net.Sockets.TcpClient();
            await client.ConnectAsync(fx.Host.BaseAddress.Host, fx.Host.BaseAddress.Port);
            await client.GetStream().WriteAsync(request);
            await Task.Delay(50);
            client.Client.LingerState = new System.Net.Sockets.LingerOption(true, 0);   // reset, mid-body
        }
        var deadline = DateTime.UtcNow.AddSeconds(10);
        string metrics;
        do
        {
            await Task.Delay(100);
            metrics = await Http.GetStringAsync("/metrics");
        } while (!metrics.Contains("status=\"499\"") && DateTime.UtcNow < deadline);
        var lines = metrics.Split('\n').Where(l => l.StartsWith("smoa_requests_total{")).ToList();
        Assert.True(lines.Any(l => l.Contains("endpoint=\"/v1/completions\"") && l.Contains("status=\"499\"")), string.Join("\n", lines));
        Assert.DoesNotContain(lines, l => l.Contains("status=\"5"));
    }

    [Fact]
    public async Task Openapi_documents_other_than_v1_are_404_in_the_api_shape()
    {
        var resp = await Http.GetAsync("/openapi/v2.json");
        Assert.Equal(HttpStatusCode.NotFound, resp.StatusCode);
        Assert.Equal("application/json", resp.Content.Headers.ContentType?.MediaType);
        Assert.NotNull(JsonNode.Parse(await resp.Content.ReadAsStringAsync())!["error"]!["message"]);
        Assert.Equal(HttpStatusCode.OK, (await Http.GetAsync("/openapi/v1.json")).StatusCode);
    }
}

public class MetricsAccessTests
{
    [Fact]
    public async Task Metrics_can_be_opened_to_anonymous_scrapers_by_setting()
    {
        await using var host = await TestHost.StartAsync(FakeBackend.Spec(new FakeRunner()), o => o.MetricsAllowAnonymous = true);
        using var anon = new HttpClient { BaseAddress = host.BaseAddress };
        Assert.Contains("smoa_requests_total", await anon.GetStringAsync("/metrics"));
        Assert.Equal(HttpStatusCode.Unauthorized, (await anon.GetAsync("/v1/models")).StatusCode);
    }
}
