using System.Text.Json;
using SmoaServe.Tests;

namespace SmoaServe.Text.Tests;

/// <summary>Real Llama chat templates; expected prompts derived by hand from each template's text.</summary>
public class ChatTemplateTests
{
    static readonly ChatMessage[] Conversation =
    [
        new("system", "You are terse."),
        new("user", "What is 2+2?"),
        new("assistant", "4"),
        new("user", "And 3+3? "),
    ];

    static IChatTemplate Load(string template, string bos, string eos, out TempModelDir dir)
    {
        dir = new TempModelDir().WriteJson("tokenizer_config.json", new Dictionary<string, object>
        {
            ["bos_token"] = bos,
            ["eos_token"] = new Dictionary<string, object> { ["content"] = eos, ["lstrip"] = false },
            ["chat_template"] = template,
        });
        return ChatTemplateLoader.Load(dir.Path) ?? throw new InvalidOperationException("no template");
    }

    [Fact]
    public void FixtureTemplateRendersHfPromptAndItsIds()
    {
        var expected = JsonDocument.Parse(File.ReadAllText(Path.Combine(FixturePaths.LlamaA, "expected_tokens.json"))).RootElement;
        var messages = expected.GetProperty("chat_messages").EnumerateArray()
            .Select(m => new ChatMessage(m.GetProperty("role").GetString()!, m.GetProperty("content").GetString()!)).ToList();
        var template = ChatTemplateLoader.Load(FixturePaths.LlamaA)!;
        var text = template.Render(messages, addGenerationPrompt: true);
        Assert.Equal(expected.GetProperty("chat_prompt_text").GetString(), text);
        var ids = TokenizerLoader.Load(FixturePaths.LlamaA).Encode(text, addSpecialTokens: false);
        Assert.Equal(expected.GetProperty("chat_prompt_ids").EnumerateArray().Select(e => e.GetInt32()), ids);
    }

    [Fact]
    public void Llama2Template()
    {
        var t = Load(LlamaTemplates.Llama2, "<s>", "</s>", out var dir);
        using var _ = dir;
        Assert.Equal("<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nWhat is 2+2? [/INST] 4 </s><s>[INST] And 3+3? [/INST]",
            t.Render(Conversation, addGenerationPrompt: true));
        Assert.Equal("<s>[INST] Hi [/INST]", t.Render([new("user", " Hi ")], addGenerationPrompt: false));
    }

    [Fact]
    public void Llama2TemplateRaisesOnNonAlternatingRoles()
    {
        var t = Load(LlamaTemplates.Llama2, "<s>", "</s>", out var dir);
        using var _ = dir;
        var e = Assert.Throws<ChatTemplateException>(() => t.Render([new("user", "a"), new("user", "b")], true));
        Assert.Equal("Conversation roles must alternate user/assistant/user/assistant/...", e.Message);
    }

    const string Llama3Turns =
        "You are terse.<|eot_id|>" +
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>" +
        "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>" +
        "<|start_header_id|>user<|end_header_id|>\n\nAnd 3+3?<|eot_id|>";

    [Fact]
    public void Llama31Template()
    {
        var t = Load(LlamaTemplates.Llama31, "<|begin_of_text|>", "<|eot_id|>", out var dir);
        using var _ = dir;
        Assert.Equal(
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" +
            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n" + Llama3Turns +
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            t.Render(Conversation, addGenerationPrompt: true));
        Assert.Equal(
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" +
            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>" +
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
            t.Render([new("user", "Hi")], addGenerationPrompt: false));
    }

    [Fact]
    public void Llama31TemplateWithToolsToolCallAndToolResult()
    {
        var t = Load(LlamaTemplates.Llama31, "<|begin_of_text|>", "<|eot_id|>", out var dir);
        using var _ = dir;
        var tool = new Dictionary<string, object?>
        {
            ["name"] = "get_weather",
            ["parameters"] = new Dictionary<string, object?> { ["city"] = "string" },
        };
        var messages = new List<IReadOnlyDictionary<string, object?>>
        {
            new Dictionary<string, object?> { ["role"] = "user", ["content"] = "Weather in Paris?" },
            new Dictionary<string, object?>
            {
                ["role"] = "assistant", ["content"] = "",
                ["tool_calls"] = JsonDocument.Parse("""[{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]""").RootElement,
            },
            new Dictionary<string, object?> { ["role"] = "tool", ["content"] = "22C" },
        };
        var text = t.Render(messages, addGenerationPrompt: true, new Dictionary<string, object?> { ["tools"] = new[] { tool } });
        Assert.Equal(
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" +
            "Environment: ipython\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>" +
            "<|start_header_id|>user<|end_header_id|>\n\n" +
            "Given the following functions, please respond with a JSON for a function call " +
            "with its proper arguments that best answers the given prompt.\n\n" +
            "Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}." +
            "Do not use variables.\n\n" +
            "{\n    \"name\": \"get_weather\",\n    \"parameters\": {\n        \"city\": \"string\"\n    }\n}\n\n" +
            "Weather in Paris?<|eot_id|>" +
            "<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}<|eot_id|>" +
            // a string is "iterable" in Jinja, so the template JSON-quotes the tool result
            "<|start_header_id|>ipython<|end_header_id|>\n\n\"22C\"<|eot_id|>" +
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            text);
    }

    [Fact]
    public void Llama31TemplateRaisesForTwoToolCalls()
    {
        var t = Load(LlamaTemplates.Llama31, "<|begin_of_text|>", "<|eot_id|>", out var dir);
        using var _ = dir;
        var calls = JsonDocument.Parse("""[{"function": {"name": "a", "arguments": {}}}, {"function": {"name": "b", "arguments": {}}}]""").RootElement;
        var e = Assert.Throws<ChatTemplateException>(() => t.Render(
            [new Dictionary<string, object?> { ["role"] = "user", ["content"] = "x" },
             new Dictionary<string, object?> { ["role"] = "assistant", ["tool_calls"] = calls }], true));
        Assert.Equal("This model only supports single tool-calls at once!", e.Message);
    }

    [Fact]
    public void Llama32TemplateUsesStrftimeNowForTheDate()
    {
        var t = Load(LlamaTemplates.Llama32, "<|begin_of_text|>", "<|eot_id|>", out var dir);
        using var _ = dir;
        var saved = Jinja.JinjaBuiltins.Now;
        try
        {
            Jinja.JinjaBuiltins.Now = () => new DateTime(2025, 3, 7, 10, 0, 0);
            Assert.Equal(
                "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" +
                "Cutting Knowledge Date: December 2023\nToday Date: 07 Mar 2025\n\n" + Llama3Turns +
                "<|start_header_id|>assistant<|end_header_id|>\n\n",
                t.Render(Conversation, addGenerationPrompt: true));
        }
        finally { Jinja.JinjaBuiltins.Now = saved; }
        // an explicit date_string wins over strftime_now
        var withDate = t.Render(Conversation.Select(m => (IReadOnlyDictionary<string, object?>)new Dictionary<string, object?>
            { ["role"] = m.Role, ["content"] = m.Content }).ToList(), false, new Dictionary<string, object?> { ["date_string"] = "01 Jan 2030" });
        Assert.StartsWith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 01 Jan 2030\n\nYou are terse.", withDate);
        Assert.EndsWith("And 3+3?<|eot_id|>", withDate);
    }

    [Fact]
    public void ChatTemplateJinjaFileWinsAndListTemplatesPickDefault()
    {
        using var dir = new TempModelDir()
            .WriteJson("tokenizer_config.json", new Dictionary<string, object>
            {
                ["bos_token"] = "<s>",
                ["chat_template"] = new object[]
                {
                    new Dictionary<string, string> { ["name"] = "tool_use", ["template"] = "TOOLS" },
                    new Dictionary<string, string> { ["name"] = "default", ["template"] = "{{ bos_token }}{{ messages[0].content }}" },
                },
            });
        Assert.Equal("<s>hi", ChatTemplateLoader.Load(dir.Path)!.Render([new("user", "hi")], false));
        dir.Write("chat_template.jinja", "J{{ messages | length }}\n");
        Assert.Equal("J1", ChatTemplateLoader.Load(dir.Path)!.Render([new("user", "hi")], false));
    }

    [Fact]
    public void DeeplyNestedTemplateIsRejectedNotAStackOverflow()
    {
        using var dir = new TempModelDir().Write("chat_template.jinja", "{{ " + new string('(', 5000) + "1" + new string(')', 5000) + " }}"
            + string.Concat(Enumerable.Repeat("{% if true %}", 5000)));
        var e = Assert.Throws<ChatTemplateException>(() => ChatTemplateLoader.Load(dir.Path));
        Assert.Contains("nested too deeply", e.Message);
        dir.Write("chat_template.jinja", "{{ 'a'" + string.Concat(Enumerable.Repeat(" ~ 'a'", 100_000)) + " }}");
        e = Assert.Throws<ChatTemplateException>(() => ChatTemplateLoader.Load(dir.Path));
        Assert.Contains("nested more than 200 levels", e.Message);
    }

    [Fact]
    public void NoTemplateGivesNull()
    {
        using var dir = new TempModelDir().WriteJson("tokenizer_config.json", new Dictionary<string, object> { ["bos_token"] = "<s>" });
        Assert.Null(ChatTemplateLoader.Load(dir.Path));
    }

    [Theory]
    [InlineData("{% include 'x.jinja' %}", "unsupported tag")]
    [InlineData("{% for m in messages %}{{ m }}", "missing '{% endfor %}'")]
    [InlineData("{{ messages | frobnicate }}", "unknown filter 'frobnicate'")]
    [InlineData("{% if x is weird %}{% endif %}", "unknown test 'is weird'")]
    [InlineData("{{ messages[0].content.format(1) }}", "unsupported method '.format()'")]
    [InlineData("{{ lipsum(3) }}", "unsupported function 'lipsum()'")]
    [InlineData("{% if x %}a{% endfor %}", "unexpected '{% endfor %}'")]
    [InlineData("{{ 'abc }}", "unterminated string literal")]
    [InlineData("{{ '%s!' % name }}", "printf-style string formatting")]
    [InlineData("{% set xs = [] %}{{ xs.append(1) }}", "unsupported method '.append()'")]
    [InlineData("{% raw %}x{% endraw %}", "unsupported tag '{% raw %}'")]
    [InlineData("{{ x if y }", "unexpected '}'")]
    public void UnsupportedOrBrokenTemplatesFailAtLoad(string template, string message)
    {
        using var dir = new TempModelDir().Write("chat_template.jinja", template);
        var e = Assert.Throws<ChatTemplateException>(() => ChatTemplateLoader.Load(dir.Path));
        Assert.Contains(message, e.Message);
        Assert.Contains("chat_template.jinja", e.Message);
    }
}
