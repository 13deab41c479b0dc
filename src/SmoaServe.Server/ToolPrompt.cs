using System.Text.Json;
using SmoaServe.Text;

namespace SmoaServe.Server;

/// <summary>
/// The chat prompt of a request with tools. The template renders the tools (its `tools` variable) when it has tool
/// support, like Llama 3.1's. A template that renders the same text with and without them would drop them silently;
/// then the tools are written into the system message in Llama 3.1's JSON tool-call prompt, and assistant tool calls
/// without text become their JSON calls, so the model sees the functions and its own earlier calls either way.
/// </summary>
public static class ToolPrompt
{
    /// <summary>Llama 3.1's instruction for JSON tool calls (its template's custom-tools prompt).</summary>
    public const string Instruction =
        "Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\n" +
        "Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}. Do not use variables.\n\n";

    public static string Render(IChatTemplate template, List<IReadOnlyDictionary<string, object?>> messages, JsonElement? tools)
    {
        if (tools is not { } t) return template.Render(messages, addGenerationPrompt: true);
        var variables = new Dictionary<string, object?>(StringComparer.Ordinal) { ["tools"] = t };
        string withTools = template.Render(messages, addGenerationPrompt: true, variables);
        if (withTools != template.Render(messages, addGenerationPrompt: true)) return withTools;
        return template.Render(WithToolsInSystemMessage(messages, t), addGenerationPrompt: true, variables);
    }

    /// <summary>The tools (one JSON object per line) after the instruction, in the first system message (added when there is none).</summary>
    public static List<IReadOnlyDictionary<string, object?>> WithToolsInSystemMessage(List<IReadOnlyDictionary<string, object?>> messages, JsonElement tools)
    {
        var text = new System.Text.StringBuilder(Instruction);
        foreach (var tool in tools.EnumerateArray()) text.Append(tool.GetRawText()).Append("\n\n");
        var result = messages.Select(CallsAsContent).ToList();
        if (result.Count > 0 && result[0].TryGetValue("role", out var role) && role as string is "system" or "developer")
        {
            var first = new Dictionary<string, object?>(result[0], StringComparer.Ordinal);
            first["content"] = (first.GetValueOrDefault("content") as string ?? "") + "\n\n" + text.ToString().TrimEnd();
            result[0] = first;
        }
        else result.Insert(0, new Dictionary<string, object?>(StringComparer.Ordinal) { ["role"] = "system", ["content"] = text.ToString().TrimEnd() });
        return result;
    }

    /// <summary>An assistant message with tool calls and no text: its calls as Llama 3.1 JSON calls, separated by ';'.</summary>
    private static IReadOnlyDictionary<string, object?> CallsAsContent(IReadOnlyDictionary<string, object?> message)
    {
        if (!message.TryGetValue("tool_calls", out var calls) || calls is not List<object?> list || list.Count == 0
            || message.GetValueOrDefault("content") is string { Length: > 0 }) return message;
        var rendered = list.OfType<IReadOnlyDictionary<string, object?>>().Select(call =>
        {
            var function = call.GetValueOrDefault("function") as IReadOnlyDictionary<string, object?>;
            var arguments = function?.GetValueOrDefault("arguments") is JsonElement a ? a.GetRawText() : "{}";
            return $"{{\"name\": {JsonSerializer.Serialize(function?.GetValueOrDefault("name") as string ?? "")}, \"parameters\": {arguments}}}";
        });
        var copy = new Dictionary<string, object?>(message, StringComparer.Ordinal) { ["content"] = string.Join("; ", rendered) };
        return copy;
    }
}
