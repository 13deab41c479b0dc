using System.ClientModel;
using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using OpenAI.Chat;
using SmoaServe.Server;

namespace SmoaServe.Server.Tests;

/// <summary>One in-process server over the fake model (byte tokenizer, hash "model"), adapters "ad1" and "ad2".</summary>
public sealed class FakeServerFixture : IAsyncLifetime
{
    public FakeRunner Runner { get; } = new(slots: 4, maxSeq: 256) { StepDelay = TimeSpan.FromMilliseconds(1) };
    public TestHost Host { get; private set; } = null!;
    public string AdapterDir { get; } = Path.Combine(Path.GetTempPath(), "smoa-fake-adapter-" + Guid.NewGuid().ToString("N"));

    public async Task InitializeAsync()
    {
        Directory.CreateDirectory(AdapterDir);
        File.WriteAllText(Path.Combine(AdapterDir, "adapter_config.json"), "{}");
        Host = await TestHost.StartAsync(FakeBackend.Spec(Runner), o => { o.Adapters["ad1"] = AdapterDir; o.Adapters["ad2"] = AdapterDir; });
    }

    public async Task DisposeAsync()
    {
        await Host.DisposeAsync();
        Directory.Delete(AdapterDir, true);
    }
}

public class ServerApiTests(FakeServerFixture fx) : IClassFixture<FakeServerFixture>
{
    private HttpClient Http => fx.Host.Http;

    /// <summary>The fake model's greedy text for a prompt, computed without the server.</summary>
    private static string Expected(IReadOnlyList<int> prompt, int n, string? adapter)
    {
        var seq = prompt.ToList();
        var sb = new StringBuilder();
        for (int i = 0; i < n; i++) { int t = FakeRunner.PredictByHash(seq, adapter); sb.Append((char)t); seq.Add(t); }
        return sb.ToString();
    }

    private static IReadOnlyList<int> ChatPrompt(params (string Role, string Content)[] messages) =>
        new FakeTokenizer().Encode(new FakeChatTemplate().Render(messages.Select(m => new Text.ChatMessage(m.Role, m.Content)).ToList(), true), false);

    private async Task<(HttpStatusCode Status, JsonNode? Body, HttpResponseMessage Response)> Post(string path, string json, string? key = TestHost.Key)
    {
        using var req = new HttpRequestMessage(HttpMethod.Post, path) { Content = new StringContent(json, Encoding.UTF8, "application/json") };
        using var anonymous = new HttpClient { BaseAddress = fx.Host.BaseAddress };
        var client = key == TestHost.Key ? Http : anonymous;
        if (key is not null && key != TestHost.Key) req.Headers.Authorization = new("Bearer", key);
        var resp = await client.SendAsync(req);
        string text = await resp.Content.ReadAsStringAsync();
        return (resp.StatusCode, text.Length > 0 && text.TrimStart().StartsWith('{') ? JsonNode.Parse(text) : null, resp);
    }

    private static void AssertError(JsonNode? body, string? param = null)
    {
        var error = body?["error"] ?? throw new Xunit.Sdk.XunitException("no error object");
        Assert.False(string.IsNullOrEmpty((string?)error["message"]));
        Assert.False(string.IsNullOrEmpty((string?)error["type"]));
        if (param is not null) Assert.Equal(param, (string?)error["param"]);
    }

    [Fact]
    public async Task Models_lists_base_and_adapters_with_parent()
    {
        var models = (await fx.Host.OpenAI().GetOpenAIModelClient().GetModelsAsync()).Value.Select(m => m.Id).ToList();
        Assert.Equal(["fake-base", "ad1", "ad2"], models);
        var raw = JsonNode.Parse(await Http.GetStringAsync("/v1/models"))!;
        Assert.Equal("list", (string?)raw["object"]);
        var ad1 = raw["data"]!.AsArray().Single(m => (string?)m!["id"] == "ad1")!;
        Assert.Equal("fake-base", (string?)ad1["parent"]);
        Assert.Equal(256, (int?)ad1["max_model_len"]);
        Assert.Null(raw["data"]![0]!["parent"]);
    }

    [Fact]
    public async Task Chat_non_streaming_via_sdk_returns_the_models_greedy_text_and_usage()
    {
        var chat = fx.Host.OpenAI().GetChatClient("ad1");
        var result = (await chat.CompleteChatAsync([new SystemChatMessage("be brief"), new UserChatMessage("hi")],
            new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 9 })).Value;
        var prompt = ChatPrompt(("system", "be brief"), ("user", "hi"));
        Assert.Equal(Expected(prompt, 9, "ad1"), result.Content[0].Text);
        Assert.Equal(ChatFinishReason.Length, result.FinishReason);
        Assert.Equal(prompt.Count, result.Usage.InputTokenCount);
        Assert.Equal(9, result.Usage.OutputTokenCount);
        Assert.Equal(prompt.Count + 9, result.Usage.TotalTokenCount);
        Assert.Equal("ad1", result.Model);
    }

    [Fact]
    public async Task Chat_streaming_via_sdk_yields_the_same_text_and_usage()
    {
        var chat = fx.Host.OpenAI().GetChatClient("fake-base");
        var options = new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 12 };
        var text = new StringBuilder();
        ChatTokenUsage? usage = null;
        ChatFinishReason? finish = null;
        int updates = 0;
        await foreach (var u in chat.CompleteChatStreamingAsync([new UserChatMessage("stream please")], options))
        {
            updates++;
            foreach (var part in u.ContentUpdate) text.Append(part.Text);
            usage ??= u.Usage;
            finish ??= u.FinishReason;
        }
        var prompt = ChatPrompt(("user", "stream please"));
        Assert.Equal(Expected(prompt, 12, null), text.ToString());
        Assert.True(updates >= 12);
        Assert.Equal(ChatFinishReason.Length, finish);
        Assert.NotNull(usage); // the SDK asks for stream_options.include_usage
        Assert.Equal((prompt.Count, 12), (usage!.InputTokenCount, usage.OutputTokenCount));
    }

    [Fact]
    public async Task Raw_stream_has_role_chunk_finish_usage_and_done()
    {
        var (status, _, resp) = await Post("/v1/chat/completions",
            """{"model":"ad2","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],"max_tokens":3,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}""");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("text/event-stream", resp.Content.Headers.ContentType?.MediaType);
        var events = (await resp.Content.ReadAsStringAsync()).Split("\n\n", StringSplitOptions.RemoveEmptyEntries).ToList();
        Assert.All(events, e => Assert.StartsWith("data: ", e));
        Assert.Equal("data: [DONE]", events[^1]);
        var chunks = events[..^1].Select(e => JsonNode.Parse(e["data: ".Length..])!).ToList();
        Assert.Equal("assistant", (string?)chunks[0]["choices"]![0]!["delta"]!["role"]);
        Assert.All(chunks, c => Assert.Equal("chat.completion.chunk", (string?)c["object"]));
        Assert.Equal("length", (string?)chunks[^2]["choices"]![0]!["finish_reason"]);
        Assert.Empty(chunks[^1]["choices"]!.AsArray());
        Assert.Equal(3, (int?)chunks[^1]["usage"]!["completion_tokens"]);
        string text = string.Concat(chunks.Select(c => (string?)c["choices"]!.AsArray().FirstOrDefault()?["delta"]?["content"] ?? ""));
        Assert.Equal(Expected(ChatPrompt(("user", "ab")), 3, "ad2"), text);
    }

    [Fact]
    public async Task Legacy_completions_with_text_and_token_ids()
    {
        var (status, body, _) = await Post("/v1/completions", """{"model":"fake-base","prompt":"Once","max_tokens":5,"temperature":0}""");
        Assert.Equal(HttpStatusCode.OK, status);
        var ids = new FakeTokenizer().Encode("Once", addSpecialTokens: true);
        Assert.Equal("text_completion", (string?)body!["object"]);
        Assert.Equal(Expected(ids, 5, null), (string?)body["choices"]![0]!["text"]);
        Assert.Equal("length", (string?)body["choices"]![0]!["finish_reason"]);
        Assert.Equal(ids.Count, (int?)body["usage"]!["prompt_tokens"]);

        var (status2, body2, _) = await Post("/v1/completions", """{"model":"ad1","prompt":[70,71,72],"max_tokens":4,"temperature":0}""");
        Assert.Equal(HttpStatusCode.OK, status2);
        Assert.Equal(Expected([70, 71, 72], 4, "ad1"), (string?)body2!["choices"]![0]!["text"]);
    }

    [Fact]
    public async Task Stop_strings_cut_the_text_and_finish_with_stop()
    {
        var ids = new FakeTokenizer().Encode("Stop", addSpecialTokens: true);
        string full = Expected(ids, 20, null);
        string stop = full.Substring(6, 2);
        int cut = full.IndexOf(stop, StringComparison.Ordinal);
        var (status, body, _) = await Post("/v1/completions", $$"""{"model":"fake-base","prompt":"Stop","max_tokens":20,"temperature":0,"stop":["{{stop}}","zzzzzz"]}""");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(full[..cut], (string?)body!["choices"]![0]!["text"]);
        Assert.Equal("stop", (string?)body["choices"]![0]!["finish_reason"]);
        Assert.Equal(cut + stop.Length, (int?)body["usage"]!["completion_tokens"]);
    }

    [Fact]
    public async Task Seeded_sampling_is_reproducible_through_the_api()
    {
        const string req = """{"model":"fake-base","prompt":"seed","max_tokens":16,"temperature":1.5,"seed":42}""";
        var a = (string?)(await Post("/v1/completions", req)).Body!["choices"]![0]!["text"];
        var b = (string?)(await Post("/v1/completions", req)).Body!["choices"]![0]!["text"];
        Assert.Equal(a, b);
    }

    [Fact]
    public async Task Missing_or_wrong_key_is_401()
    {
        var e = await Assert.ThrowsAsync<ClientResultException>(() => fx.Host.OpenAI("wrong").GetOpenAIModelClient().GetModelsAsync());
        Assert.Equal(401, e.Status);
        var (status, body, resp) = await Post("/v1/chat/completions", """{"model":"fake-base","messages":[]}""", key: null);
        Assert.Equal(HttpStatusCode.Unauthorized, status);
        AssertError(body);
        Assert.Equal("Bearer", resp.Headers.WwwAuthenticate.Single().Scheme);
        Assert.Equal(HttpStatusCode.Unauthorized, (await Post("/tokenize", """{"prompt":"x"}""", key: "nope")).Status);
    }

    [Fact]
    public async Task Unknown_model_is_404_via_sdk_and_raw()
    {
        var e = await Assert.ThrowsAsync<ClientResultException>(() =>
            fx.Host.OpenAI().GetChatClient("no-such-model").CompleteChatAsync([new UserChatMessage("x")]));
        Assert.Equal(404, e.Status);
        var (status, body, _) = await Post("/v1/completions", """{"model":"nope","prompt":"x"}""");
        Assert.Equal(HttpStatusCode.NotFound, status);
        AssertError(body, "model");
        Assert.Equal("model_not_found", (string?)body!["error"]!["code"]);
    }

    [Theory]
    [InlineData("{not json", null)]
    [InlineData("[1,2]", null)]
    [InlineData("""{"messages":[{"role":"user","content":"x"}]}""", "model")]
    [InlineData("""{"model":"fake-base"}""", "messages")]
    [InlineData("""{"model":"fake-base","messages":[]}""", "messages")]
    [InlineData("""{"model":"fake-base","messages":"hi"}""", "messages")]
    [InlineData("""{"model":42,"messages":[{"role":"user","content":"x"}]}""", "model")]
    [InlineData("""{"model":"fake-base","messages":[{"role":"user","content":5}]}""", "messages[0].content")]
    [InlineData("""{"model":"fake-base","messages":[{"content":"x"}]}""", "messages[0].role")]
    [InlineData("""{"model":"fake-base","messages":[{"role":"user","content":"x"}],"max_tokens":0}""", "max_tokens")]
    [InlineData("""{"model":"fake-base","messages":[{"role":"user","content":"x"}],"max_tokens":-3}""", "max_tokens")]
    [InlineData("""{"model":"fake-base","messages":[{"role":"user","content":"x"}],"max_tokens":"5"}""", "max_tokens")]
    [InlineData("""{"model":"fake-base","messages":[{"role":"user","content":"x"}],"max_tokens":2.5}""", "max_tokens")]
    [InlineData("""{"model":"fake-base","messages":[{"role":"user","content":"x"}],"max_completion_tokens":0}""", "max_completion_tokens")]
    [InlineData("""{"model":"fake-base","messages":[{"role":"user","content":"x"}],"temperature":"hot"}""", "temperature")]
    [InlineData("""{"model":"fake-base","messages":[{"role":"user","content":"x"}],"temperature":7}""", "temperature")]
    [InlineData("""{"model":"fake-base","messages":[{"role":"user","content":"x"}],"top_p":0}""", "top_p")]
    [InlineData("""{"model":"fake-base","messages":[{"role":"user","content":"x"}],"n":0}""", "n")]
    [InlineData("""{"model":"fake-base","messages":[{"role":"user","content":"x"}],"functions":[]}""", "functions")]
    [InlineData("""{"model":"fake-base","messages":[{"role":"user","content":"x"}],"frobnicate":1}""", "frobnicate")]
    [InlineData("""{"model":"fake-base","messages":[{"role":"user","content":"x"}],"presence_penalty":3}""", "presence_penalty")]
    [InlineData("""{"model":"fake-base","messages":[{"role":"user","content":"x"}],"logit_bias":{"a":1}}""", "logit_bias")]
    [InlineData("""{"model":"fake-base","messages":[{"role":"user","content":"x"}],"top_logprobs":2}""", "top_logprobs")]
    [InlineData("""{"model":"fake-base","messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":20,"n":128,"max_tokens":200}""", "top_logprobs")]
    [InlineData("""{"model":"fake-base","messages":[{"role":"user","content":"x"}],"response_format":{"type":"yaml"}}""", "response_format")]
    [InlineData("""{"model":"fake-base","messages":[{"role":"user","content":"x"}],"tool_choice":"required"}""", "tool_choice")]
    [InlineData("""{"model":"b","messages":[{"role":"user","content":"x"}],"adapter_id":"a"}""", "adapter_id")]
    [InlineData("""{"model":"fake-base","messages":[{"role":"user","content":"x"}],"stop":[true]}""", "stop")]
    [InlineData("""{"model":"fake-base","messages":[{"role":"user","content":"x"}],"stream":"yes"}""", "stream")]
    [InlineData("""{"model":"fake-base","messages":[{"role":"user","content":"x"}],"seed":"s"}""", "seed")]
    [InlineData("""{"model":"fake-base","messages":[{"role":"user","content":"x"}],"max_tokens":300}""", "max_tokens")]
    [InlineData("""{"model":"fake-base","messages":[{"role":"user","content":"x"}],"max_tokens":2147483647}""", "max_tokens")]
    [InlineData("""{"model":"fake-base","messages":[{"role":"user","content":"x"}],"max_tokens":1e30}""", "max_tokens")]
    [InlineData("""{"model":"fake-base","messages":[{"role":"user","content":"x"}],"seed":1e400}""", null)]
    [InlineData("""{"model":"fake-base","messages":[{"role":"user","content":"x"}],"top_k":-5}""", "top_k")]
    [InlineData("""{"model":"fake-base","messages":[{"role":"user","content":"\ud83e"}]}""", "messages[0].content")]
    [InlineData("""{"model":"fake-base","messages":[{"role":"user","content":[{"type":"text","text":"\ud83e"}]}]}""", "messages[0].content.text")]
    public async Task Malformed_chat_requests_are_400(string json, string? param)
    {
        var (status, body, _) = await Post("/v1/chat/completions", json);
        Assert.Equal(HttpStatusCode.BadRequest, status);
        AssertError(body, param);
    }

    [Theory]
    [InlineData("""{"model":"fake-base","prompt":[1,-2]}""")]
    [InlineData("""{"model":"fake-base","prompt":[1,99999]}""")]
    [InlineData("""{"model":"fake-base","prompt":[]}""")]
    [InlineData("""{"model":"fake-base","prompt":["a",1]}""")]
    [InlineData("""{"model":"fake-base","prompt":{"x":1}}""")]
    [InlineData("""{"model":"fake-base","prompt":"x","suffix":"y"}""")]
    [InlineData("""{"model":"fake-base","prompt":"x","echo":true,"logprobs":1}""")]
    [InlineData("""{"model":"fake-base","prompt":"x","best_of":3}""")]
    [InlineData("""{"model":"fake-base","prompt":"x","logprobs":true}""")]
    [InlineData("""{"model":"fake-base","prompt":"x","logprobs":21}""")]
    [InlineData("""{"model":"fake-base","prompt":"x","stop_token_ids":[99999]}""")]
    [InlineData("""{"model":"fake-base","prompt":"x","logit_bias":{"99999":1}}""")]
    [InlineData("""{"model":"fake-base","prompt":"x","logit_bias":{"5":101}}""")]
    [InlineData("""{"model":"fake-base","prompt":"x","n":200}""")]
    [InlineData("""{"model":"fake-base","prompt":"x","min_p":1.5}""")]
    [InlineData("""{"model":"fake-base","prompt":"x","repetition_penalty":0}""")]
    [InlineData("""{"model":"fake-base","prompt":"x","response_format":{"type":"json_schema","json_schema":{"schema":{"type":"string","format":"email"}}}}""")]
    [InlineData("""{"model":"fake-base","prompt":"\ud800"}""")] // a lone surrogate cannot be read as a string
    [InlineData("""{"model":"fake-base","prompt":"x","stop":["\udc00"]}""")]
    [InlineData("""{"model":"fake-\ud800","prompt":"x"}""")]
    public async Task Malformed_completion_requests_are_400(string json)
    {
        var (status, body, _) = await Post("/v1/completions", json);
        Assert.Equal(HttpStatusCode.BadRequest, status);
        AssertError(body);
    }

    [Fact]
    public async Task Bodies_are_parsed_as_json_whatever_the_content_type()
    {
        var form = await Http.PostAsync("/v1/completions", new StringContent("{bad", Encoding.UTF8, "application/x-www-form-urlencoded"));
        Assert.Equal(HttpStatusCode.BadRequest, form.StatusCode);
        AssertError(JsonNode.Parse(await form.Content.ReadAsStringAsync()));
        var plain = await Http.PostAsync("/v1/completions", new StringContent("""{"model":"fake-base","prompt":"p","max_tokens":2}""", Encoding.UTF8, "text/plain"));
        Assert.Equal(HttpStatusCode.OK, plain.StatusCode);
        var empty = await Http.PostAsync("/v1/completions", new ByteArrayContent([]));
        Assert.Equal(HttpStatusCode.BadRequest, empty.StatusCode);
    }

    [Fact]
    public async Task Prompt_longer_than_the_context_is_400()
    {
        string longPrompt = new('x', 300);
        var (status, body, _) = await Post("/v1/completions", $$"""{"model":"fake-base","prompt":"{{longPrompt}}"}""");
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("context_length_exceeded", (string?)body!["error"]!["code"]);
        var chat = await Post("/v1/chat/completions", $$"""{"model":"fake-base","messages":[{"role":"user","content":"{{longPrompt}}"}]}""");
        Assert.Equal(HttpStatusCode.BadRequest, chat.Status);
    }

    [Fact]
    public async Task Tokenize_and_detokenize_in_vllm_shape()
    {
        var (status, body, _) = await Post("/tokenize", """{"model":"fake-base","prompt":"hé"}""");
        Assert.Equal(HttpStatusCode.OK, status);
        var expected = new FakeTokenizer().Encode("hé", true);
        Assert.Equal(expected, body!["tokens"]!.AsArray().Select(t => (int)t!).ToList());
        Assert.Equal(expected.Count, (int?)body["count"]);
        Assert.Equal(256, (int?)body["max_model_len"]);

        var noSpecial = await Post("/tokenize", """{"prompt":"hé","add_special_tokens":false}""");
        Assert.Equal(expected.Count - 1, (int?)noSpecial.Body!["count"]);

        var chat = await Post("/tokenize", """{"model":"ad1","messages":[{"role":"user","content":"q"}]}""");
        Assert.Equal(ChatPrompt(("user", "q")), chat.Body!["tokens"]!.AsArray().Select(t => (int)t!).ToList());

        var detok = await Post("/detokenize", """{"model":"fake-base","tokens":[104,195,169]}""");
        Assert.Equal("hé", (string?)detok.Body!["prompt"]);
        Assert.Equal(HttpStatusCode.BadRequest, (await Post("/detokenize", """{"tokens":[1,5000]}""")).Status);
        Assert.Equal(HttpStatusCode.BadRequest, (await Post("/tokenize", """{"model":"fake-base"}""")).Status);
        Assert.Equal(HttpStatusCode.NotFound, (await Post("/tokenize", """{"model":"zz","prompt":"x"}""")).Status);
    }

    [Fact]
    public async Task Health_metrics_and_openapi_are_served()
    {
        using var anon = new HttpClient { BaseAddress = fx.Host.BaseAddress };
        Assert.Equal(HttpStatusCode.OK, (await anon.GetAsync("/health")).StatusCode);
        await Post("/v1/completions", """{"model":"fake-base","prompt":"m","max_tokens":3}""");
        // metrics carry adapter names: the key is needed (401 in the API's shape without it)
        var refused = await anon.GetAsync("/metrics");
        Assert.Equal(HttpStatusCode.Unauthorized, refused.StatusCode);
        AssertError(JsonNode.Parse(await refused.Content.ReadAsStringAsync()));
        string metrics = await Http.GetStringAsync("/metrics");
        foreach (var name in new[] { "smoa_requests_total", "smoa_generation_tokens_total", "smoa_prompt_tokens_total", "smoa_running_requests",
                     "smoa_queued_requests", "smoa_time_to_first_token_seconds_bucket", "smoa_inter_token_latency_seconds_bucket" })
            Assert.Contains(name, metrics);
        var doc = JsonNode.Parse(await anon.GetStringAsync("/openapi/v1.json"))!;
        foreach (var path in new[] { "/v1/chat/completions", "/v1/completions", "/v1/models", "/tokenize", "/detokenize", "/health" })
            Assert.NotNull(doc["paths"]![path]);
        var unknown = await anon.GetAsync("/v2/nothing");
        Assert.Equal(HttpStatusCode.NotFound, unknown.StatusCode);
        AssertError(JsonNode.Parse(await unknown.Content.ReadAsStringAsync()));
        var wrongMethod = await Http.GetAsync("/v1/chat/completions");
        Assert.Equal(HttpStatusCode.MethodNotAllowed, wrongMethod.StatusCode);
        AssertError(JsonNode.Parse(await wrongMethod.Content.ReadAsStringAsync()));
        var chatDoc = doc["paths"]!["/v1/chat/completions"]!["post"]!;
        Assert.NotNull(chatDoc["requestBody"]!["content"]!["application/json"]);
        Assert.NotNull(chatDoc["responses"]!["200"]);
    }

    [Fact]
    public async Task Request_metrics_count_errors_with_their_status()
    {
        var (status, _, _) = await Post("/v1/completions", """{"model":"fake-base","prompt":"x","max_tokens":-1}""");
        Assert.Equal(HttpStatusCode.BadRequest, status);
        (status, _, _) = await Post("/v1/completions", """{"model":"fake-base","prompt":"x"}""", key: "wrong-key");
        Assert.Equal(HttpStatusCode.Unauthorized, status);
        var lines = (await Http.GetStringAsync("/metrics")).Split('\n')
            .Where(l => l.StartsWith("smoa_requests_total{") && l.Contains("endpoint=\"/v1/completions\"")).ToList();
        Assert.Contains(lines, l => l.Contains("status=\"400\""));
        Assert.Contains(lines, l => l.Contains("status=\"401\""));
    }

    [Fact]
    public async Task Client_disconnect_cancels_the_sequence_and_frees_its_slot()
    {
        int freedBefore = fx.Runner.Log.Count(l => l.StartsWith('F'));
        using var cts = new CancellationTokenSource();
        using var req = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
        {
            Content = new StringContent("""{"model":"fake-base","prompt":"long","max_tokens":240,"stream":true}""", Encoding.UTF8, "application/json"),
        };
        var resp = await Http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead, cts.Token);
        var stream = await resp.Content.ReadAsStreamAsync(cts.Token);
        var buffer = new byte[64];
        await stream.ReadAsync(buffer, cts.Token); // generation is running
        cts.Cancel();
        resp.Dispose();
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (fx.Host.Engine.Scheduler.InFlight > 0 && DateTime.UtcNow < deadline) await Task.Delay(20);
        Assert.Equal(0, fx.Host.Engine.Scheduler.InFlight);
        Assert.True(fx.Runner.Log.Count(l => l.StartsWith('F')) > freedBefore);
    }
}

public class ServerLimitTests
{
    [Fact]
    public async Task A_full_queue_answers_429_with_retry_after()
    {
        var runner = new FakeRunner(slots: 1) { PrefillGate = new SemaphoreSlim(0) };
        await using var host = await TestHost.StartAsync(FakeBackend.Spec(runner), o => o.RetryAfterSeconds = 3, configureEngine: o => { o.MaxQueued = 1; o.MaxRunning = 1; });
        const string req = """{"model":"fake-base","prompt":"q","max_tokens":2}""";
        var first = host.Http.PostAsync("/v1/completions", new StringContent(req, Encoding.UTF8, "application/json"));
        Assert.True(runner.PrefillEntered.Wait(TimeSpan.FromSeconds(20)));
        var second = host.Http.PostAsync("/v1/completions", new StringContent(req, Encoding.UTF8, "application/json"));
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (host.Engine.Scheduler.QueueDepth < 1 && DateTime.UtcNow < deadline) await Task.Delay(10);
        var third = await host.Http.PostAsync("/v1/completions", new StringContent(req, Encoding.UTF8, "application/json"));
        Assert.Equal((HttpStatusCode)429, third.StatusCode);
        Assert.Equal(TimeSpan.FromSeconds(3), third.Headers.RetryAfter?.Delta);
        Assert.Equal("rate_limit_exceeded", (string?)JsonNode.Parse(await third.Content.ReadAsStringAsync())!["error"]!["type"]);
        runner.PrefillGate.Release(100);
        Assert.Equal(HttpStatusCode.OK, (await first).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await second).StatusCode);
    }

    [Fact]
    public async Task Removing_an_adapter_under_a_running_request_lets_it_finish_and_answers_404_to_new_ones()
    {
        var runner = new FakeRunner(slots: 2) { StepDelay = TimeSpan.FromMilliseconds(5) };
        string dir = Path.Combine(Path.GetTempPath(), "smoa-removed-adapter-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "adapter_config.json"), "{}");
        try
        {
            await using var host = await TestHost.StartAsync(FakeBackend.Spec(runner), o => o.Adapters["short-lived"] = dir);
            var pending = host.Http.PostAsync("/v1/completions",
                new StringContent("""{"model":"short-lived","prompt":"abc","max_tokens":40,"ignore_eos":true,"temperature":0}""", Encoding.UTF8, "application/json"));
            Assert.True(runner.PrefillEntered.Wait(TimeSpan.FromSeconds(20)));
            Assert.True(await host.Adapters.RemoveAsync("short-lived"));
            var resp = await pending;
            Assert.Equal(HttpStatusCode.OK, resp.StatusCode);
            var body = JsonNode.Parse(await resp.Content.ReadAsStringAsync())!;
            var seq = new FakeTokenizer().Encode("abc", true).ToList();
            var expected = new StringBuilder();
            for (int i = 0; i < 40; i++) { int t = FakeRunner.PredictByHash(seq, "short-lived"); expected.Append((char)t); seq.Add(t); }
            Assert.Equal(expected.ToString(), (string?)body["choices"]![0]!["text"]);
            // the device copy goes once the row is done
            for (int i = 0; i < 100 && runner.HasAdapter("short-lived"); i++) await Task.Delay(20);
            Assert.False(runner.HasAdapter("short-lived"));

            var late = await host.Http.PostAsync("/v1/completions",
                new StringContent("""{"model":"short-lived","prompt":"abc","max_tokens":4}""", Encoding.UTF8, "application/json"));
            Assert.Equal(HttpStatusCode.NotFound, late.StatusCode);
            var error = JsonNode.Parse(await late.Content.ReadAsStringAsync())!["error"]!;
            Assert.Equal("model_not_found", (string?)error["code"]);
            Assert.Equal("model", (string?)error["param"]);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public async Task A_body_over_the_limit_is_413()
    {
        await using var host = await TestHost.StartAsync(FakeBackend.Spec(new FakeRunner()), o => o.MaxRequestBodyBytes = 1024);
        var huge = await host.Http.PostAsync("/v1/completions", new StringContent("{\"prompt\":\"" + new string('x', 8192) + "\"}", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, huge.StatusCode);
        Assert.NotNull(JsonNode.Parse(await huge.Content.ReadAsStringAsync())!["error"]);
    }

    [Fact]
    public async Task Without_an_admin_key_the_server_refuses_to_start()
    {
        var e = Assert.Throws<Microsoft.Extensions.Options.OptionsValidationException>(() => SmoaServer.Build(null, o => { o.AdminKey = ""; o.ServedModelName = "x"; },
            FakeBackend.Spec(new FakeRunner())));
        Assert.Contains("SMOA_ADMIN_KEY", e.Message);
        await Task.CompletedTask;
    }

    [Fact]
    public async Task Graceful_shutdown_lets_a_running_stream_finish()
    {
        var runner = new FakeRunner(slots: 2) { StepDelay = TimeSpan.FromMilliseconds(10) };
        var host = await TestHost.StartAsync(FakeBackend.Spec(runner));
        using var req = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
        {
            Content = new StringContent("""{"model":"fake-base","prompt":"bye","max_tokens":30,"stream":true}""", Encoding.UTF8, "application/json"),
        };
        var resp = await host.Http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead);
        var stopping = host.App.StopAsync();
        string body = await resp.Content.ReadAsStringAsync();
        await stopping;
        Assert.True(body.EndsWith("data: [DONE]\n\n"), body);
        Assert.True(body.Contains("\"finish_reason\":\"length\""), body);
        Assert.True(runner.Disposed);
        await host.App.DisposeAsync();
    }

    [Fact]
    public async Task Shutdown_cancels_streams_that_outlast_the_grace_period()
    {
        var runner = new FakeRunner(slots: 2) { StepDelay = TimeSpan.FromMilliseconds(20) };
        var host = await TestHost.StartAsync(FakeBackend.Spec(runner), o => o.ShutdownTimeoutSeconds = 0.5);
        using var req = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
        {
            Content = new StringContent("""{"model":"fake-base","prompt":"long","max_tokens":240,"stream":true}""", Encoding.UTF8, "application/json"),
        };
        var resp = await host.Http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead);
        var body = resp.Content.ReadAsStringAsync();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        await host.App.StopAsync();
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(4), $"stop took {clock.Elapsed}");
        try { Assert.DoesNotContain("\"finish_reason\":\"length\"", await body); }
        catch (HttpRequestException) { } // the connection was aborted mid-stream: also a cancelled stream
        Assert.True(runner.Disposed);
        Assert.Equal(0, host.Engine.Scheduler.InFlight);
        await host.App.DisposeAsync();
    }
}
