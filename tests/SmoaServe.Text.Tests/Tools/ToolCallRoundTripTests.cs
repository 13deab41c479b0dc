using System.Text.Json;
using SmoaServe.Tests;
using SmoaServe.Text.Structured;
using SmoaServe.Text.Tests.Structured;
using SmoaServe.Text.Tools;

namespace SmoaServe.Text.Tests.Tools;

/// <summary>
/// Forced tool calls: the grammar admits exactly {"name": f, "parameters": args-of-f}; walks through it parse back
/// into OpenAI tool calls whose arguments validate; the calls and results render through the real Llama 3.1 template.
/// </summary>
public class ToolCallRoundTripTests
{
    const string ToolsJson = """
        [{"type": "function", "function": {"name": "get_weather", "description": "Current weather",
          "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                         "unit": {"enum": ["c", "f"]}}, "required": ["city"], "additionalProperties": false}}},
         {"type": "function", "function": {"name": "get_time",
          "parameters": {"type": "object", "properties": {"zone": {"type": "integer"}}, "required": ["zone"]}}},
         {"type": "function", "function": {"name": "get"}}]
        """;

    static IReadOnlyList<ToolFunction> Tools()
    {
        using var doc = JsonDocument.Parse(ToolsJson);
        return ToolDefinitions.Parse(doc.RootElement);
    }

    [Fact]
    public void RequiredChoiceGrammarTiesArgumentsToTheName()
    {
        var g = ToolCallGrammar.Build(Tools(), ToolChoice.Required);
        Assert.True(g.Accepts("""{"name": "get_weather", "parameters": {"city": "Paris"}}"""));
        Assert.True(g.Accepts("""{"name":"get_weather","parameters":{"city":"Paris","unit":"c"}}"""));
        Assert.True(g.Accepts("""{"name": "get_time", "parameters": {"zone": -5}}"""));
        Assert.True(g.Accepts("""{"name": "get", "parameters": {}}"""));
        Assert.False(g.Accepts("""{"name": "get_time", "parameters": {"city": "Paris"}}"""));
        Assert.False(g.Accepts("""{"name": "get_weather", "parameters": {"zone": 1}}"""));
        Assert.False(g.Accepts("""{"name": "get_x", "parameters": {}}"""));
        Assert.False(g.Accepts("""{"name": "get", "parameters": {"a": 1}}"""));
        Assert.False(g.Accepts("""{"parameters": {}, "name": "get"}"""));

        var named = ToolCallGrammar.Build(Tools(), new ToolChoice(ToolChoiceMode.Named, "get_time"));
        Assert.True(named.Accepts("""{"name": "get_time", "parameters": {"zone": 3}}"""));
        Assert.False(named.Accepts("""{"name": "get_weather", "parameters": {"city": "Paris"}}"""));
        Assert.Throws<ArgumentException>(() => ToolCallGrammar.Build(Tools(), ToolChoice.Auto));
    }

    [Fact]
    public void UnsupportedArgumentSchemaNamesTheTool()
    {
        using var doc = JsonDocument.Parse("""[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"d": {"type": "string", "format": "date"}}}}}]""");
        var e = Assert.Throws<UnsupportedSchemaException>(() => ToolCallGrammar.Build(ToolDefinitions.Parse(doc.RootElement), ToolChoice.Required));
        Assert.Equal("format", e.Keyword);
        Assert.StartsWith("tool 'f': ", e.Message);
    }

    [Fact]
    public void ConstrainedWalksRoundTripThroughTheParser()
    {
        var tok = TokenizerLoader.Load(FixturePaths.LlamaA);
        var vocab = TokenVocabulary.From(tok, [tok.EosTokenId!.Value]);
        var tools = Tools();
        var grammar = ToolCallGrammar.Build(tools, ToolChoice.Required, new JsonGrammarOptions { MaxWhitespace = 2, DefaultMaxStringLength = 8 });
        var rng = new Random(17);
        var seen = new HashSet<string>();
        for (var i = 0; i < 30; i++)
        {
            var text = tok.Decode(ConstrainedWalkTests.Walk(grammar, vocab, rng, bruteForce: i < 3));
            var parsed = ToolCallParser.Parse(text, tools.Select(t => t.Name).ToHashSet());
            var call = Assert.Single(parsed.Calls);
            Assert.Null(parsed.Content);
            seen.Add(call.Name);
            var schema = tools.Single(t => t.Name == call.Name).Parameters;
            using var args = JsonDocument.Parse(call.Arguments);
            if (schema is { } s) Assert.Null(SchemaValidator.Validate(args.RootElement, s));
            else Assert.Empty(args.RootElement.EnumerateObject());
        }
        Assert.Equal(3, seen.Count);
    }

    static IChatTemplate Llama31(out TempModelDir dir)
    {
        dir = new TempModelDir().WriteJson("tokenizer_config.json", new Dictionary<string, object>
        {
            ["bos_token"] = "<|begin_of_text|>", ["eos_token"] = "<|eot_id|>", ["chat_template"] = LlamaTemplates.Llama31,
        });
        return ChatTemplateLoader.Load(dir.Path)!;
    }

    const string WeatherToolJson =
        "{\n    \"type\": \"function\",\n    \"function\": {\n        \"name\": \"get_weather\",\n        \"description\": \"Current weather\",\n" +
        "        \"parameters\": {\n            \"type\": \"object\",\n            \"properties\": {\n                \"city\": {\n" +
        "                    \"type\": \"string\"\n                }\n            },\n            \"required\": [\n                \"city\"\n" +
        "            ]\n        }\n    }\n}";

    const string WeatherTool = """
        {"type": "function", "function": {"name": "get_weather", "description": "Current weather",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
        """;

    [Fact]
    public void Llama31RendersToolsCallsAndResultsFromOpenAiMessages()
    {
        var t = Llama31(out var dir);
        using var _ = dir;
        // the assistant message as this server returns it (arguments as a JSON string), then the client's tool result
        var call = ToolCallParser.Parse("""{"name": "get_weather", "parameters": {"city": "Paris"}}""", newId: () => "call_1").Calls[0];
        var assistant = JsonSerializer.Serialize(new
        {
            role = "assistant", content = (string?)null,
            tool_calls = new[] { new { id = call.Id, type = call.Type, function = new { name = call.Name, arguments = call.Arguments } } },
        });
        using var messages = JsonDocument.Parse($$"""
            [{"role": "system", "content": "You are helpful."},
             {"role": "user", "content": [{"type": "text", "text": "Weather in "}, {"type": "text", "text": "Paris?"}]},
             {{assistant}},
             {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 22}"}]
            """);
        using var tools = JsonDocument.Parse($"[{WeatherTool}]");
        var text = t.Render(ChatMessages.ForTemplate(messages.RootElement), addGenerationPrompt: true,
            new Dictionary<string, object?> { ["tools"] = tools.RootElement });
        Assert.Equal(
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" +
            "Environment: ipython\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou are helpful.<|eot_id|>" +
            "<|start_header_id|>user<|end_header_id|>\n\n" +
            "Given the following functions, please respond with a JSON for a function call " +
            "with its proper arguments that best answers the given prompt.\n\n" +
            "Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}." +
            "Do not use variables.\n\n" + WeatherToolJson + "\n\n" +
            "Weather in Paris?<|eot_id|>" +
            "<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}<|eot_id|>" +
            "<|start_header_id|>ipython<|end_header_id|>\n\n\"{\\\"temp\\\": 22}\"<|eot_id|>" +
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            text);
    }

    [Fact]
    public void Llama31RendersToolsInTheSystemMessageAndBuiltinToolCalls()
    {
        var t = Llama31(out var dir);
        using var _ = dir;
        using var messages = JsonDocument.Parse("""
            [{"role": "user", "content": "Search x"},
             {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function",
               "function": {"name": "brave_search", "arguments": "{\"query\": \"x\", \"n\": \"3\"}"}}]},
             {"role": "tool", "tool_call_id": "c", "content": "result"}]
            """);
        using var tools = JsonDocument.Parse($"[{WeatherTool}]");
        var text = t.Render(ChatMessages.ForTemplate(messages.RootElement), addGenerationPrompt: true, new Dictionary<string, object?>
        {
            ["tools"] = tools.RootElement,
            ["tools_in_user_message"] = false,
            ["builtin_tools"] = new[] { "brave_search", "code_interpreter", "wolfram_alpha" },
            ["date_string"] = "01 Dec 2025",
        });
        Assert.Equal(
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" +
            "Environment: ipython\nTools: brave_search, wolfram_alpha\n\n" +
            "Cutting Knowledge Date: December 2023\nToday Date: 01 Dec 2025\n\n" +
            "You have access to the following functions. To call a function, please respond with JSON for a function call." +
            "Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}." +
            "Do not use variables.\n\n" + WeatherToolJson + "\n\n<|eot_id|>" +
            "<|start_header_id|>user<|end_header_id|>\n\nSearch x<|eot_id|>" +
            "<|start_header_id|>assistant<|end_header_id|>\n\n<|python_tag|>brave_search.call(query=\"x\", n=\"3\")<|eom_id|>" +
            "<|start_header_id|>ipython<|end_header_id|>\n\n\"result\"<|eot_id|>" +
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            text);
    }

    [Fact]
    public void MalformedToolMessagesAreRejectedWithTheField()
    {
        ToolRequestException Bad(string json) { using var d = JsonDocument.Parse(json); return Assert.Throws<ToolRequestException>(() => ChatMessages.ForTemplate(d.RootElement)); }
        Assert.Equal("messages[0].tool_calls[0].function.arguments",
            Bad("""[{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]""").Param);
        Assert.Equal("messages[0].tool_call_id", Bad("""[{"role": "tool", "content": "x"}]""").Param);
        Assert.Equal("messages[0].role", Bad("""[{"role": "robot", "content": "x"}]""").Param);
    }
}
