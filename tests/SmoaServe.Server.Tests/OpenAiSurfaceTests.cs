#pragma warning disable OPENAI001 // Seed is marked experimental in the SDK
using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.DependencyInjection;
using OpenAI.Chat;
using SmoaServe.Engine.Generation;
using SmoaServe.Text.Tests.Structured;
using static TorchSharp.torch;

namespace SmoaServe.Server.Tests;

/// <summary>
/// The OpenAI request surface on the real llama-a checkpoint through the official .NET SDK (and raw HTTP where the SDK
/// has no field): logprobs against an independent full forward of prompt + completion, n choices against independent
/// seeded requests, penalties and bias against their definitions, constrained JSON and tool calls.
/// </summary>
public class OpenAiSurfaceTests(LlamaServerFixture fx) : IClassFixture<LlamaServerFixture>
{
    private ChatClient Chat(string model = "llama-a") => fx.Host.OpenAI().GetChatClient(model);

    private async Task<JsonNode> PostOk(string path, object body)
    {
        var resp = await fx.Host.Http.PostAsync(path, new StringContent(JsonSerializer.Serialize(body), Encoding.UTF8, "application/json"));
        string text = await resp.Content.ReadAsStringAsync();
        Assert.True(resp.StatusCode == HttpStatusCode.OK, $"{(int)resp.StatusCode}: {text}");
        return JsonNode.Parse(text)!;
    }

    private async Task<List<int>> ChatPromptIds(string user)
    {
        var body = await PostOk("/tokenize", new { model = "llama-a", messages = new[] { new { role = "user", content = user } }, add_generation_prompt = true });
        return body["tokens"]!.AsArray().Select(t => (int)t!).ToList();
    }

    /// <summary>Token ids back from the bytes the API reports (byte-level BPE: each token's bytes are distinct).</summary>
    private int IdOf(ReadOnlyMemory<byte>? maybe)
    {
        var bytes = maybe ?? throw new Xunit.Sdk.XunitException("no bytes reported");
        var vocab = fx.Host.App.Services.GetRequiredService<OutputVocabulary>().Vocabulary;
        for (int id = 0; id < vocab.Size; id++)
            if (vocab.TokenBytes(id).SequenceEqual(bytes.Span)) return id;
        throw new Xunit.Sdk.XunitException("no token has bytes " + Convert.ToHexString(bytes.Span));
    }

    /// <summary>Logit rows [T, vocab] of an independent full forward of the sequence (what `smoa score` computes).</summary>
    private static float[][] Scored(IReadOnlyList<int> ids)
    {
        using var logits = TestModels.Score(TestModels.LlamaA, ids.Select(i => (long)i).ToArray(), null);
        var flat = logits.data<float>().ToArray();
        int v = (int)logits.shape[1];
        return Enumerable.Range(0, ids.Count).Select(t => flat.AsSpan(t * v, v).ToArray()).ToArray();
    }

    private static double[][] ScoredLogSoftmax(IReadOnlyList<int> ids) => Scored(ids).Select(r => TokenLogprobs.LogSoftmax(r)).ToArray();

    [Fact]
    public async Task Chat_logprobs_are_the_log_softmax_of_the_scored_logits_at_each_generated_position()
    {
        var prompt = await ChatPromptIds("Tell me about rivers.");
        var options = new ChatCompletionOptions
        {
            Temperature = 1f, Seed = 21, MaxOutputTokenCount = 10, IncludeLogProbabilities = true, TopLogProbabilityCount = 3,
        };
        ChatCompletion result = await Chat().CompleteChatAsync([new UserChatMessage("Tell me about rivers.")], options);
        var entries = result.ContentTokenLogProbabilities;
        Assert.NotEmpty(entries);
        var ids = entries.Select(e => IdOf(e.Utf8Bytes)).ToList();
        var rows = ScoredLogSoftmax([.. prompt, .. ids]);
        for (int k = 0; k < ids.Count; k++)
        {
            var row = rows[prompt.Count - 1 + k]; // logits at the position before token k predict it
            Assert.Equal(row[ids[k]], entries[k].LogProbability, 3e-4);
            Assert.Equal(3, entries[k].TopLogProbabilities.Count);
            var best = Enumerable.Range(0, row.Length).OrderByDescending(i => row[i]).Take(3).ToList();
            for (int j = 0; j < 3; j++)
            {
                Assert.Equal(best[j], IdOf(entries[k].TopLogProbabilities[j].Utf8Bytes));
                Assert.Equal(row[best[j]], entries[k].TopLogProbabilities[j].LogProbability, 3e-4);
            }
        }
        Assert.Equal(string.Concat(entries.Select(e => e.Token)), result.Content[0].Text);

        // streamed with the same seed: the same tokens and logprobs, spread over the chunks
        var streamed = new List<ChatTokenLogProbabilityDetails>();
        var text = new StringBuilder();
        await foreach (var u in Chat().CompleteChatStreamingAsync([new UserChatMessage("Tell me about rivers.")], options))
        {
            streamed.AddRange(u.ContentTokenLogProbabilities);
            foreach (var part in u.ContentUpdate) text.Append(part.Text);
        }
        Assert.Equal(result.Content[0].Text, text.ToString());
        Assert.Equal(entries.Select(e => (e.Token, e.LogProbability)), streamed.Select(e => (e.Token, e.LogProbability)));
    }

    [Fact]
    public async Task Stop_token_ids_and_repetition_penalty_act_as_defined()
    {
        var prompt = await ChatPromptIds("Name a colour.");
        var greedy = new ChatCompletionOptions { Temperature = 0f, MaxOutputTokenCount = 8, IncludeLogProbabilities = true, EndUserId = "user-17" };
        ChatCompletion plain = await Chat().CompleteChatAsync([new UserChatMessage("Name a colour.")], greedy);
        var ids = plain.ContentTokenLogProbabilities.Select(e => IdOf(e.Utf8Bytes)).ToList();
        Assert.True(ids.Count >= 4);
        int stopAt = ids.FindIndex(1, id => id != ids[0]);
        // stop given as token ids: the choice ends at that token, which is not part of the text
        var stopped = await PostOk("/v1/chat/completions", new
        {
            model = "llama-a", messages = new[] { new { role = "user", content = "Name a colour." } }, temperature = 0, max_tokens = 8, stop = new[] { ids[stopAt] },
        });
        var choice = stopped["choices"]![0]!;
        Assert.Equal("stop", (string)choice["finish_reason"]!);
        Assert.Equal(string.Concat(plain.ContentTokenLogProbabilities.Take(stopAt).Select(e => e.Token)), (string)choice["message"]!["content"]!);

        // repetition_penalty 1.8 (HF / vLLM): over prompt and generated ids, positive logits divided, negative multiplied
        var body = await PostOk("/v1/chat/completions", new
        {
            model = "llama-a", messages = new[] { new { role = "user", content = "Name a colour." } }, temperature = 0, max_tokens = 8, repetition_penalty = 1.8,
            logprobs = true,
        });
        var penalised = body["choices"]![0]!["logprobs"]!["content"]!.AsArray()
            .Select(e => IdOf(new ReadOnlyMemory<byte>(e!["bytes"]!.AsArray().Select(b => (byte)(int)b!).ToArray()))).ToList();
        var rows = Scored([.. prompt, .. penalised]);
        var seen = prompt.ToHashSet();
        for (int k = 0; k < penalised.Count; k++)
        {
            var row = rows[prompt.Count - 1 + k];
            int expected = Enumerable.Range(0, row.Length).MaxBy(i => !seen.Contains(i) ? row[i] : row[i] > 0 ? row[i] / 1.8f : row[i] * 1.8f);
            Assert.Equal(expected, penalised[k]);
            seen.Add(penalised[k]);
        }
    }

    [Fact]
    public async Task N_choices_equal_independent_seeded_requests_and_stream_with_their_indices()
    {
        int[] prompt = [1019, 5, 77, 300, 12, 9, 41, 200, 18, 3, 3, 99];
        var together = await PostOk("/v1/completions", new { model = "llama-a", prompt, n = 3, seed = 11, temperature = 1.0, max_tokens = 12, ignore_eos = true });
        var texts = together["choices"]!.AsArray().OrderBy(c => (int)c!["index"]!).Select(c => (string)c!["text"]!).ToList();
        Assert.Equal(3, texts.Count);
        Assert.Equal(36, (int)together["usage"]!["completion_tokens"]!);
        Assert.Equal(prompt.Length, (int)together["usage"]!["prompt_tokens"]!);
        for (int i = 0; i < 3; i++)
        {
            var alone = await PostOk("/v1/completions", new { model = "llama-a", prompt, seed = 11 + i, temperature = 1.0, max_tokens = 12, ignore_eos = true });
            Assert.Equal(texts[i], (string)alone["choices"]![0]!["text"]!);
        }
        Assert.True(texts.Distinct().Count() > 1, "different seeds should give different choices");

        // streamed: the same choices, each chunk carrying its choice index
        var resp = await fx.Host.Http.PostAsync("/v1/completions", new StringContent(JsonSerializer.Serialize(
            new { model = "llama-a", prompt, n = 3, seed = 11, temperature = 1.0, max_tokens = 12, ignore_eos = true, stream = true }), Encoding.UTF8, "application/json"));
        var streamed = new StringBuilder[3].Select(_ => new StringBuilder()).ToArray();
        var finishes = new string?[3];
        foreach (var line in (await resp.Content.ReadAsStringAsync()).Split('\n'))
        {
            if (!line.StartsWith("data: {")) continue;
            foreach (var c in JsonNode.Parse(line[6..])!["choices"]!.AsArray())
            {
                int i = (int)c!["index"]!;
                streamed[i].Append((string)c["text"]!);
                finishes[i] ??= (string?)c["finish_reason"];
            }
        }
        Assert.Equal(texts, streamed.Select(s => s.ToString()));
        Assert.All(finishes, f => Assert.Equal("length", f));
    }

    [Fact]
    public async Task Several_prompts_with_echo_are_choices_in_prompt_order()
    {
        var body = await PostOk("/v1/completions", new { model = "llama-a", prompt = new[] { "The sea", "A tall tree" }, n = 2, seed = 5, max_tokens = 4, echo = true, temperature = 0.8 });
        var choices = body["choices"]!.AsArray().OrderBy(c => (int)c!["index"]!).ToList();
        Assert.Equal(4, choices.Count);
        for (int p = 0; p < 2; p++)
        {
            string prompt = p == 0 ? "The sea" : "A tall tree";
            for (int i = 0; i < 2; i++)
            {
                string text = (string)choices[p * 2 + i]!["text"]!;
                Assert.StartsWith(prompt, text);
                var alone = await PostOk("/v1/completions", new { model = "llama-a", prompt, seed = 5 + i, max_tokens = 4, temperature = 0.8 });
                Assert.Equal(prompt + (string)alone["choices"]![0]!["text"]!, text);
            }
        }
    }

    [Fact]
    public async Task Frequency_penalty_and_logit_bias_change_greedy_choices_exactly_as_defined()
    {
        var prompt = await ChatPromptIds("Count to ten.");
        var options = new ChatCompletionOptions { Temperature = 0f, MaxOutputTokenCount = 12, IncludeLogProbabilities = true, FrequencyPenalty = 1.5f };
        ChatCompletion penalised = await Chat().CompleteChatAsync([new UserChatMessage("Count to ten.")], options);
        var ids = penalised.ContentTokenLogProbabilities.Select(e => IdOf(e.Utf8Bytes)).ToList();
        var rows = ScoredLogSoftmax([.. prompt, .. ids]);
        var counts = new Dictionary<int, int>();
        bool changed = false;
        for (int k = 0; k < ids.Count; k++)
        {
            // log-softmax differs from the logits by a constant per row: the argmax of logit − 1.5·count is the same
            var row = rows[prompt.Count - 1 + k];
            int expected = Enumerable.Range(0, row.Length).MaxBy(i => row[i] - 1.5 * counts.GetValueOrDefault(i));
            Assert.Equal(expected, ids[k]);
            changed |= expected != Enumerable.Range(0, row.Length).MaxBy(i => row[i]);
            counts[ids[k]] = counts.GetValueOrDefault(ids[k]) + 1;
        }
        Assert.True(changed, "the penalty should move at least one greedy choice");

        int favoured = IdOf(new ReadOnlyMemory<byte>(Encoding.UTF8.GetBytes("e")));
        var biased = new ChatCompletionOptions { Temperature = 0f, MaxOutputTokenCount = 5 };
        biased.LogitBiases[favoured] = 100;
        ChatCompletion result = await Chat().CompleteChatAsync([new UserChatMessage("Count to ten.")], biased);
        Assert.Equal("eeeee", result.Content[0].Text);
    }

    private const string WeatherSchema = """
        {"type":"object","properties":{"city":{"type":"string","maxLength":10},"unit":{"enum":["c","f"]},"days":{"type":"integer"},
         "hourly":{"type":"boolean"},"tags":{"type":"array","items":{"enum":["rain","sun","wind"]},"maxItems":3}},
         "required":["city","unit","days"],"additionalProperties":false}
        """;

    [Fact]
    public async Task Json_schema_output_parses_and_validates()
    {
        using var schema = JsonDocument.Parse(WeatherSchema);
        for (int seed = 0; seed < 4; seed++)
        {
            var options = new ChatCompletionOptions
            {
                Temperature = 1f, Seed = seed, MaxOutputTokenCount = 300,
                ResponseFormat = ChatResponseFormat.CreateJsonSchemaFormat("weather", BinaryData.FromString(WeatherSchema), jsonSchemaIsStrict: true),
            };
            ChatCompletion result = await Chat().CompleteChatAsync([new UserChatMessage("Weather as JSON.")], options);
            Assert.Equal(ChatFinishReason.Stop, result.FinishReason);
            using var doc = JsonDocument.Parse(result.Content[0].Text);
            Assert.Null(SchemaValidator.Validate(doc.RootElement, schema.RootElement));
        }
    }

    [Fact]
    public async Task Unsupported_schema_keywords_and_parameters_are_400_naming_them()
    {
        var format = new { type = "json_schema", json_schema = new { name = "x", schema = new { type = "string", pattern = "^a+$" } } };
        var resp = await fx.Host.Http.PostAsync("/v1/chat/completions", new StringContent(JsonSerializer.Serialize(
            new { model = "llama-a", messages = new[] { new { role = "user", content = "x" } }, response_format = format }), Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.BadRequest, resp.StatusCode);
        var error = JsonNode.Parse(await resp.Content.ReadAsStringAsync())!["error"]!;
        Assert.Equal("response_format", (string?)error["param"]);
        Assert.Contains("pattern", (string)error["message"]!);
    }

    /// <summary>Short, so that the tools written into the prompt leave the small model's context room for the call.</summary>
    private const string ToolSchema = """
        {"type":"object","properties":{"city":{"enum":["Oslo","Rome"]},"days":{"type":"integer"},"hourly":{"type":"boolean"}},
         "required":["city","days"],"additionalProperties":false}
        """;

    private static ChatTool WeatherTool() =>
        ChatTool.CreateFunctionTool("get_weather", "Weather for a city", BinaryData.FromString(ToolSchema));

    [Fact]
    public async Task Forced_tool_calls_follow_the_schema_and_round_trip()
    {
        using var schema = JsonDocument.Parse(ToolSchema);
        var options = new ChatCompletionOptions { Temperature = 1f, Seed = 3, ToolChoice = ChatToolChoice.CreateFunctionChoice("get_weather") };
        options.Tools.Add(WeatherTool());
        List<ChatMessage> messages = [new UserChatMessage("Weather in Paris?")];
        ChatCompletion result = await Chat().CompleteChatAsync(messages, options);
        Assert.Equal(ChatFinishReason.ToolCalls, result.FinishReason);
        var call = Assert.Single(result.ToolCalls);
        Assert.Equal("get_weather", call.FunctionName);
        Assert.StartsWith("call_", call.Id);
        using (var args = JsonDocument.Parse(call.FunctionArguments.ToString()))
            Assert.Null(SchemaValidator.Validate(args.RootElement, schema.RootElement));

        // streamed: the same call as one delta (same seed, same arguments)
        var updates = new List<StreamingChatToolCallUpdate>();
        ChatFinishReason? finish = null;
        await foreach (var u in Chat().CompleteChatStreamingAsync(messages, options))
        {
            updates.AddRange(u.ToolCallUpdates);
            finish ??= u.FinishReason;
        }
        Assert.Equal(ChatFinishReason.ToolCalls, finish);
        Assert.Equal("get_weather", updates[0].FunctionName);
        Assert.Equal(call.FunctionArguments.ToString(), string.Concat(updates.Select(u => u.FunctionArgumentsUpdate?.ToString() ?? "")));

        // the call and its result go back: accepted, answered as text with tool_choice none
        messages.Add(new AssistantChatMessage([call]));
        messages.Add(new ToolChatMessage(call.Id, """{"temperature": 21}"""));
        var back = new ChatCompletionOptions { Temperature = 0f, MaxOutputTokenCount = 4, ToolChoice = ChatToolChoice.CreateNoneChoice() };
        back.Tools.Add(WeatherTool());
        ChatCompletion answer = await Chat().CompleteChatAsync(messages, back);
        Assert.Empty(answer.ToolCalls);
        Assert.NotEqual(ChatFinishReason.ToolCalls, answer.FinishReason);
    }

    [Fact]
    public async Task Auto_tool_choice_parses_calls_from_the_output_and_json_object_mode_gives_an_object()
    {
        // the output held to the Llama 3.1 call shape by a schema; with tool_choice auto it is parsed into tool_calls
        var callShape = """
            {"type":"object","properties":{"name":{"enum":["get_weather"]},"parameters":{"type":"object","properties":{"city":{"enum":["Oslo","Rome"]}},
             "required":["city"],"additionalProperties":false}},"required":["name","parameters"],"additionalProperties":false}
            """;
        var options = new ChatCompletionOptions
        {
            Temperature = 1f, Seed = 9, MaxOutputTokenCount = 100, ToolChoice = ChatToolChoice.CreateAutoChoice(),
            ResponseFormat = ChatResponseFormat.CreateJsonSchemaFormat("call", BinaryData.FromString(callShape)),
        };
        options.Tools.Add(WeatherTool());
        ChatCompletion result = await Chat().CompleteChatAsync([new UserChatMessage("Weather?")], options);
        Assert.Equal(ChatFinishReason.ToolCalls, result.FinishReason);
        var call = Assert.Single(result.ToolCalls);
        Assert.Equal("get_weather", call.FunctionName);
        Assert.Contains(JsonDocument.Parse(call.FunctionArguments.ToString()).RootElement.GetProperty("city").GetString(), new[] { "Oslo", "Rome" });

        // json_object: any object; a bias towards '}' closes it quickly
        var body = await PostOk("/v1/chat/completions", new
        {
            model = "llama-a", messages = new[] { new { role = "user", content = "JSON please" } }, max_tokens = 60, seed = 1,
            response_format = new { type = "json_object" }, logit_bias = new Dictionary<string, int> { [IdOf(new ReadOnlyMemory<byte>("}"u8.ToArray())).ToString()] = 30 },
        });
        string text = (string)body["choices"]![0]!["message"]!["content"]!;
        Assert.Equal(JsonValueKind.Object, JsonDocument.Parse(text).RootElement.ValueKind);
        Assert.Equal("stop", (string)body["choices"]![0]!["finish_reason"]!);
    }

    [Fact]
    public async Task Adapter_id_is_an_alternative_to_model()
    {
        int[] prompt = [1019, 40, 41, 42, 43];
        var byModel = await PostOk("/v1/completions", new { model = "lora", prompt, max_tokens = 6, temperature = 0 });
        var byAdapter = await PostOk("/v1/completions", new { model = "llama-a", adapter_id = "lora", prompt, max_tokens = 6, temperature = 0 });
        var alone = await PostOk("/v1/completions", new { adapter_id = "lora", prompt, max_tokens = 6, temperature = 0 });
        var baseText = (string)(await PostOk("/v1/completions", new { model = "llama-a", prompt, max_tokens = 6, temperature = 0 }))["choices"]![0]!["text"]!;
        Assert.Equal((string)byModel["choices"]![0]!["text"]!, (string)byAdapter["choices"]![0]!["text"]!);
        Assert.Equal((string)byModel["choices"]![0]!["text"]!, (string)alone["choices"]![0]!["text"]!);
        Assert.Equal("lora", (string)byAdapter["model"]!);
        Assert.NotEqual(baseText, (string)byModel["choices"]![0]!["text"]!);
        var missing = await fx.Host.Http.PostAsync("/v1/completions", new StringContent(JsonSerializer.Serialize(
            new { adapter_id = "nope", prompt, max_tokens = 2 }), Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.NotFound, missing.StatusCode);
    }

    [Fact]
    public async Task Completion_logprobs_have_the_legacy_shape_with_text_offsets()
    {
        var body = await PostOk("/v1/completions", new { model = "llama-a", prompt = "Once upon", max_tokens = 6, temperature = 0, logprobs = 2, ignore_eos = true });
        var choice = body["choices"]![0]!;
        var lp = choice["logprobs"]!;
        var tokens = lp["tokens"]!.AsArray().Select(t => (string)t!).ToList();
        var offsets = lp["text_offset"]!.AsArray().Select(t => (int)t!).ToList();
        Assert.Equal(6, tokens.Count);
        Assert.Equal((string)choice["text"]!, string.Concat(tokens));
        int at = 0;
        for (int i = 0; i < tokens.Count; i++) { Assert.Equal(at, offsets[i]); at += tokens[i].Length; }
        for (int i = 0; i < tokens.Count; i++)
        {
            var top = lp["top_logprobs"]![i]!.AsObject();
            Assert.Equal(2, top.Count);
            // greedy: the chosen token is the most likely one
            Assert.Equal((double)lp["token_logprobs"]![i]!, top.Select(kv => (double)kv.Value!).Max(), 9);
        }
    }
}
