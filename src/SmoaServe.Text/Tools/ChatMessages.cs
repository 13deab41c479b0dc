using System.Text;
using System.Text.Json;

namespace SmoaServe.Text.Tools;

/// <summary>
/// OpenAI chat messages turned into what chat templates expect (as vLLM / HF prepare them): text content parts
/// joined into one string, null content as "", and each assistant tool call's "arguments" JSON string parsed into
/// an object (templates such as Llama 3.1's render it with tojson). Other fields (tool_call_id, name, …) pass
/// through. Malformed messages raise <see cref="ToolRequestException"/> naming the field.
/// </summary>
public static class ChatMessages
{
    static readonly HashSet<string> Roles = ["system", "developer", "user", "assistant", "tool", "ipython"];

    public static List<IReadOnlyDictionary<string, object?>> ForTemplate(JsonElement messages)
    {
        if (messages.ValueKind != JsonValueKind.Array || messages.GetArrayLength() == 0)
            throw new ToolRequestException("messages", "messages must be a non-empty array");
        var result = new List<IReadOnlyDictionary<string, object?>>();
        var i = 0;
        foreach (var m in messages.EnumerateArray())
        {
            var at = $"messages[{i++}]";
            if (m.ValueKind != JsonValueKind.Object) throw new ToolRequestException(at, $"{at} must be an object");
            var dict = new Dictionary<string, object?>(StringComparer.Ordinal);
            foreach (var p in m.EnumerateObject()) dict[p.Name] = p.Value.Clone();
            if (!m.TryGetProperty("role", out var role) || role.ValueKind != JsonValueKind.String || !Roles.Contains(role.GetString()!))
                throw new ToolRequestException($"{at}.role", $"{at}.role must be one of {string.Join(", ", Roles)}");
            dict["role"] = role.GetString();
            dict["content"] = Content(m, at);
            if (m.TryGetProperty("tool_calls", out var calls) && calls.ValueKind != JsonValueKind.Null)
                dict["tool_calls"] = ToolCalls(calls, $"{at}.tool_calls");
            else dict.Remove("tool_calls");
            if (role.GetString() == "tool" && (!m.TryGetProperty("tool_call_id", out var id) || id.ValueKind != JsonValueKind.String))
                throw new ToolRequestException($"{at}.tool_call_id", $"{at}: a tool message needs a tool_call_id string");
            result.Add(dict);
        }
        return result;
    }

    static string Content(JsonElement m, string at)
    {
        if (!m.TryGetProperty("content", out var c) || c.ValueKind == JsonValueKind.Null) return "";
        if (c.ValueKind == JsonValueKind.String) return c.GetString()!;
        if (c.ValueKind != JsonValueKind.Array) throw new ToolRequestException($"{at}.content", $"{at}.content must be a string or an array of text parts");
        var sb = new StringBuilder();
        foreach (var part in c.EnumerateArray())
        {
            if (part.ValueKind != JsonValueKind.Object || !part.TryGetProperty("type", out var type) || type.GetString() != "text"
                || !part.TryGetProperty("text", out var text) || text.ValueKind != JsonValueKind.String)
                throw new ToolRequestException($"{at}.content", $"{at}.content: only text parts are supported");
            sb.Append(text.GetString());
        }
        return sb.ToString();
    }

    static List<object?> ToolCalls(JsonElement calls, string at)
    {
        if (calls.ValueKind != JsonValueKind.Array) throw new ToolRequestException(at, $"{at} must be an array");
        var list = new List<object?>();
        var i = 0;
        foreach (var call in calls.EnumerateArray())
        {
            var here = $"{at}[{i++}]";
            if (call.ValueKind != JsonValueKind.Object || !call.TryGetProperty("function", out var f) || f.ValueKind != JsonValueKind.Object
                || !f.TryGetProperty("name", out var name) || name.ValueKind != JsonValueKind.String)
                throw new ToolRequestException(here, $"{here} must be {{\"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}}");
            object? arguments = null;
            if (f.TryGetProperty("arguments", out var a))
            {
                if (a.ValueKind == JsonValueKind.String)
                {
                    try
                    {
                        using var doc = JsonDocument.Parse(a.GetString()!.Length == 0 ? "{}" : a.GetString()!);
                        arguments = doc.RootElement.Clone();
                    }
                    catch (JsonException e)
                    {
                        throw new ToolRequestException($"{here}.function.arguments", $"{here}.function.arguments is not valid JSON: {e.Message}");
                    }
                }
                else arguments = a.Clone();
            }
            var function = new Dictionary<string, object?>(StringComparer.Ordinal) { ["name"] = name.GetString(), ["arguments"] = arguments };
            var entry = new Dictionary<string, object?>(StringComparer.Ordinal);
            foreach (var p in call.EnumerateObject()) entry[p.Name] = p.Value.Clone();
            entry["function"] = function;
            list.Add(entry);
        }
        return list;
    }
}
