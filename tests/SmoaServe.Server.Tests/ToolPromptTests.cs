using System.Text.Json;
using SmoaServe.Text;
using SmoaServe.Text.Tools;

namespace SmoaServe.Server.Tests;

/// <summary>Tools reach the prompt whether or not the chat template renders them itself.</summary>
public class ToolPromptTests
{
    private const string Tools = """[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}]""";

    private static List<IReadOnlyDictionary<string, object?>> Messages(string json)
    {
        using var doc = JsonDocument.Parse(json);
        return ChatMessages.ForTemplate(doc.RootElement);
    }

    [Fact]
    public void A_template_without_tool_support_gets_the_tools_and_earlier_calls_in_the_messages()
    {
        var template = ChatTemplateLoader.Load(FixturePaths.LlamaA)!; // renders role and content only
        using var tools = JsonDocument.Parse(Tools);
        var messages = Messages("""
            [{"role":"user","content":"Weather in Oslo?"},
             {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Oslo\"}"}}]},
             {"role":"tool","tool_call_id":"call_1","content":"sunny"}]
            """);
        string text = ToolPrompt.Render(template, messages, tools.RootElement);
        Assert.StartsWith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + ToolPrompt.Instruction[..40], text);
        Assert.Contains("\"name\":\"get_weather\"", text);
        Assert.Contains("{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}", text);
        Assert.Contains("<|start_header_id|>tool<|end_header_id|>\n\nsunny", text);
        // without tools, the messages are rendered as given
        Assert.DoesNotContain(ToolPrompt.Instruction[..30], ToolPrompt.Render(template, messages, null));
    }

    [Fact]
    public void A_template_with_tool_support_renders_the_tools_itself()
    {
        string dir = Path.Combine(Path.GetTempPath(), "smoa-tool-template-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            File.WriteAllText(Path.Combine(dir, "chat_template.jinja"),
                "{% if tools %}TOOLS:{{ tools | length }};{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}");
            var template = ChatTemplateLoader.Load(dir)!;
            using var tools = JsonDocument.Parse(Tools);
            Assert.Equal("TOOLS:1;hi", ToolPrompt.Render(template, Messages("""[{"role":"user","content":"hi"}]"""), tools.RootElement));
        }
        finally { Directory.Delete(dir, true); }
    }
}
