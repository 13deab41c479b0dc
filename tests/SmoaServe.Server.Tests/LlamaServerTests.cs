using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using OpenAI.Chat;
using SmoaServe.Engine.Checkpoints;
using SmoaServe.Tests;
using SmoaServe.Text;

namespace SmoaServe.Server.Tests;

/// <summary>
/// `smoa serve` in-process on the real llama-a checkpoint (engine + adapter registry), with the fixtures' three
/// adapters preloaded as with --adapter: smoa (SMoA, layout from SVD), smoa-layout (SMoA with layout tensors), lora (PEFT).
/// Small prefill chunks so that prompts are prefilled in several chunks interleaved with other rows' decodes.
/// </summary>
public sealed class LlamaServerFixture : IAsyncLifetime
{
    public static readonly string[] Models = ["llama-a", "smoa", "smoa-layout", "lora"];
    public TestHost Host { get; private set; } = null!;
    public string AdaptersDir { get; } = Path.Combine(Path.GetTempPath(), "smoa-llama-adapters-" + Guid.NewGuid().ToString("N"));

    public async Task InitializeAsync()
    {
        Directory.CreateDirectory(AdaptersDir);
        Host = await TestHost.StartAsync(null, o =>
        {
            o.AdaptersDir = AdaptersDir;
            o.AdaptersPollSeconds = 0.1;
            o.Adapters["smoa"] = Path.Combine(FixturePaths.LlamaA, "smoa-adapter");
            o.Adapters["smoa-layout"] = Path.Combine(FixturePaths.LlamaA, "smoa-adapter-layout");
            o.Adapters["lora"] = Path.Combine(FixturePaths.LlamaA, "lora-adapter");
        }, baseName: null, configureEngine: o =>
        {
            o.Model = FixturePaths.LlamaA;
            o.MaxRunning = 16;
            o.MaxPrefillChunk = 8;
            o.MaxBatchedTokens = 24;
        });
    }

    public async Task DisposeAsync()
    {
        await Host.DisposeAsync();
        Directory.Delete(AdaptersDir, true);
    }
}

public class LlamaServerTests(LlamaServerFixture fx) : IClassFixture<LlamaServerFixture>
{
    private static readonly JsonNode ExpectedTokens = JsonNode.Parse(File.ReadAllText(Path.Combine(FixturePaths.LlamaA, "expected_tokens.json")))!;

    private async Task<JsonNode> PostOk(string path, object body)
    {
        var resp = await fx.Host.Http.PostAsync(path, new StringContent(JsonSerializer.Serialize(body), Encoding.UTF8, "application/json"));
        string text = await resp.Content.ReadAsStringAsync();
        Assert.True(resp.StatusCode == HttpStatusCode.OK, $"{(int)resp.StatusCode}: {text}");
        return JsonNode.Parse(text)!;
    }

    private static long[] FixtureIds(string name)
    {
        using var file = SafeTensorsFile.Open(Path.Combine(FixturePaths.LlamaA, "expected_base.safetensors"));
        using var t = file.ReadTensor(name);
        return t.data<long>().ToArray();
    }

    [Fact]
    public async Task Tokenize_messages_returns_the_fixture_chat_prompt_ids()
    {
        var body = await PostOk("/tokenize", new { model = "llama-a", messages = ExpectedTokens["chat_messages"], add_generation_prompt = true });
        var expected = ExpectedTokens["chat_prompt_ids"]!.AsArray().Select(t => (int)t!).ToList();
        Assert.Equal(expected, body["tokens"]!.AsArray().Select(t => (int)t!).ToList());
        Assert.Equal(expected.Count, (int?)body["count"]);
        Assert.Equal(512, (int?)body["max_model_len"]);
    }

    [Fact]
    public async Task Greedy_completion_from_token_ids_matches_the_hf_continuation()
    {
        long[] prompt = FixtureIds("greedy_prompt"), continuation = FixtureIds("greedy_continuation");
        var body = await PostOk("/v1/completions", new { model = "llama-a", prompt, max_tokens = continuation.Length, temperature = 0 });
        var tokenizer = TokenizerLoader.Load(FixturePaths.LlamaA);
        Assert.Equal(tokenizer.Decode(continuation.Select(x => (int)x)), (string?)body["choices"]![0]!["text"]);
        Assert.Equal(continuation.Length, (int?)body["usage"]!["completion_tokens"]);
        Assert.Equal(prompt.Length, (int?)body["usage"]!["prompt_tokens"]);
        Assert.Equal("length", (string?)body["choices"]![0]!["finish_reason"]);
    }

    [Fact]
    public async Task Sdk_lists_models_with_adapter_parents()
    {
        var ids = (await fx.Host.OpenAI().GetOpenAIModelClient().GetModelsAsync()).Value.Select(m => m.Id).ToHashSet();
        Assert.Equal(LlamaServerFixture.Models.ToHashSet(), ids);
        var raw = JsonNode.Parse(await fx.Host.Http.GetStringAsync("/v1/models"))!["data"]!.AsArray();
        Assert.All(raw.Where(m => (string?)m!["id"] != "llama-a"), m => Assert.Equal("llama-a", (string?)m!["parent"]));
    }

    [Fact]
    public async Task Sdk_chat_streaming_and_non_streaming_agree_with_usage()
    {
        var chat = fx.Host.OpenAI().GetChatClient("lora");
        OpenAI.Chat.ChatMessage[] messages = [new SystemChatMessage("You are terse."), new UserChatMessage("What is 2+2?")];
        var options = new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 16 };
        var whole = (await chat.CompleteChatAsync(messages, options)).Value;
        var text = new StringBuilder();
        ChatTokenUsage? usage = null;
        await foreach (var u in chat.CompleteChatStreamingAsync(messages, options))
        {
            foreach (var part in u.ContentUpdate) text.Append(part.Text);
            usage ??= u.Usage;
        }
        Assert.Equal(whole.Content.Count == 0 ? "" : whole.Content[0].Text, text.ToString());
        Assert.NotNull(usage);
        Assert.Equal(whole.Usage.InputTokenCount, usage!.InputTokenCount);
        Assert.Equal(whole.Usage.OutputTokenCount, usage.OutputTokenCount);
        Assert.True(whole.Usage.OutputTokenCount is > 0 and <= 16);
        Assert.Contains(whole.FinishReason, new[] { ChatFinishReason.Stop, ChatFinishReason.Length });
    }

    [Fact]
    public async Task Concurrent_requests_over_four_models_match_their_solo_outputs()
    {
        string[] prompts = ExpectedTokens["texts"]!.AsArray().Select(t => (string)t!).Where(t => t.Length > 0)
            .Append("The quick brown fox").ToArray();
        var requests = Enumerable.Range(0, 24).Select(i => (Model: LlamaServerFixture.Models[i % 4], Prompt: prompts[i / 4 % prompts.Length])).ToList();
        Task<string> Run((string Model, string Prompt) r) => PostOk("/v1/completions",
            new { model = r.Model, prompt = r.Prompt, max_tokens = 20, temperature = 0 }).ContinueWith(t => (string)t.Result["choices"]![0]!["text"]!);

        var solo = new List<string>();
        foreach (var r in requests) solo.Add(await Run(r));
        var together = await Task.WhenAll(requests.Select(Run));
        Assert.True(fx.Host.Engine.Scheduler.PeakDecodeRows >= 8, $"peak decode batch {fx.Host.Engine.Scheduler.PeakDecodeRows}");

        for (int i = 0; i < requests.Count; i++)
            Assert.True(solo[i] == together[i], $"request {i} ({requests[i].Model}): solo '{solo[i]}' vs batched '{together[i]}'");
        // different adapters give different outputs for the same prompt
        foreach (var group in requests.Select((r, i) => (r, i)).GroupBy(x => x.r.Prompt))
        {
            var outputs = group.Select(x => solo[x.i]).ToList();
            Assert.True(outputs.Distinct().Count() == outputs.Count, $"'{group.Key}': {string.Join(" | ", outputs)}");
        }
    }

    // Legacy completions go over raw HTTP: OpenAI .NET 2.15's LegacyCompletionClient is internal.

    [Fact]
    public async Task An_adapter_copied_into_the_adapters_dir_is_served_then_unloaded_when_deleted()
    {
        string dir = Path.Combine(fx.AdaptersDir, "hot-lora");
        Directory.CreateDirectory(dir);
        foreach (var f in new[] { "adapter_config.json", "adapter_model.safetensors" })
            File.Copy(Path.Combine(FixturePaths.LlamaA, "lora-adapter", f), Path.Combine(dir, f));
        async Task<bool> Served() => JsonNode.Parse(await fx.Host.Http.GetStringAsync("/v1/models"))!["data"]!.AsArray().Any(m => (string?)m!["id"] == "hot-lora");
        await WaitUntil(Served, true);
        var request = new { prompt = "Hello, world!", max_tokens = 12, temperature = 0 };
        var hot = await PostOk("/v1/completions", new { model = "hot-lora", request.prompt, request.max_tokens, request.temperature });
        var preloaded = await PostOk("/v1/completions", new { model = "lora", request.prompt, request.max_tokens, request.temperature });
        Assert.Equal((string?)preloaded["choices"]![0]!["text"], (string?)hot["choices"]![0]!["text"]); // same files, same output

        Directory.Delete(dir, true);
        await WaitUntil(Served, false);
        var gone = await fx.Host.Http.PostAsync("/v1/completions", new StringContent(JsonSerializer.Serialize(new { model = "hot-lora", prompt = "x" }), Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.NotFound, gone.StatusCode);
        Assert.False(await fx.Host.Engine.Scheduler.RunOnModelThread(r => r.HasAdapter("hot-lora")));
    }

    private static async Task WaitUntil(Func<Task<bool>> condition, bool expected)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (await condition() != expected)
        {
            Assert.True(DateTime.UtcNow < deadline, "timed out waiting for the adapters directory watcher");
            await Task.Delay(50);
        }
    }

    [Fact]
    public async Task Errors_on_the_real_model()
    {
        var tooLong = Enumerable.Repeat(5, 600).ToArray();
        var resp = await fx.Host.Http.PostAsync("/v1/completions", new StringContent(JsonSerializer.Serialize(new { model = "llama-a", prompt = tooLong }), Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.BadRequest, resp.StatusCode);
        resp = await fx.Host.Http.PostAsync("/v1/completions", new StringContent("""{"model":"llama-a","prompt":[1,2,1024]}""", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.BadRequest, resp.StatusCode);
        resp = await fx.Host.Http.PostAsync("/v1/chat/completions", new StringContent("""{"model":"smoa-x","messages":[{"role":"user","content":"x"}]}""", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.NotFound, resp.StatusCode);
    }
}
