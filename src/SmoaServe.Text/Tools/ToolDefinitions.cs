using System.Text.Json;
using System.Text.RegularExpressions;

namespace SmoaServe.Text.Tools;

/// <summary>A request's tools or tool_choice is malformed; <see cref="Param"/> names the field (→ HTTP 400).</summary>
public sealed class ToolRequestException(string param, string message) : ArgumentException(message)
{
    public string Param { get; } = param;
}

/// <summary>One function of an OpenAI tools array; Parameters is its JSON Schema (null: takes no arguments).</summary>
public sealed record ToolFunction(string Name, string? Description, JsonElement? Parameters);

public enum ToolChoiceMode { None, Auto, Required, Named }

/// <summary>OpenAI tool_choice: "none", "auto", "required" or {"type":"function","function":{"name":…}}.</summary>
public sealed record ToolChoice(ToolChoiceMode Mode, string? FunctionName = null)
{
    public static ToolChoice None { get; } = new(ToolChoiceMode.None);
    public static ToolChoice Auto { get; } = new(ToolChoiceMode.Auto);
    public static ToolChoice Required { get; } = new(ToolChoiceMode.Required);

    /// <summary>Whether the output must be a tool call (its arguments then follow the function's schema).</summary>
    public bool ForcesCall => Mode is ToolChoiceMode.Required or ToolChoiceMode.Named;
}

/// <summary>Reads and checks the tools and tool_choice fields of a chat request.</summary>
public static partial class ToolDefinitions
{
    public const int MaxTools = 128;

    [GeneratedRegex("^[a-zA-Z0-9_.-]{1,64}$")]
    private static partial Regex NamePattern();

    /// <summary>The functions of a tools array (OpenAI shape: {"type":"function","function":{name, description, parameters}}).</summary>
    public static IReadOnlyList<ToolFunction> Parse(JsonElement tools)
    {
        if (tools.ValueKind == JsonValueKind.Null || tools.ValueKind == JsonValueKind.Undefined) return [];
        if (tools.ValueKind != JsonValueKind.Array) throw new ToolRequestException("tools", "tools must be an array");
        if (tools.GetArrayLength() > MaxTools) throw new ToolRequestException("tools", $"at most {MaxTools} tools are supported");
        var result = new List<ToolFunction>();
        var names = new HashSet<string>(StringComparer.Ordinal);
        var i = 0;
        foreach (var t in tools.EnumerateArray())
        {
            var at = $"tools[{i++}]";
            if (t.ValueKind != JsonValueKind.Object) throw new ToolRequestException(at, $"{at} must be an object");
            if (!t.TryGetProperty("type", out var type) || type.ValueKind != JsonValueKind.String || type.GetString() != "function")
                throw new ToolRequestException($"{at}.type", $"{at}.type must be \"function\"");
            if (!t.TryGetProperty("function", out var f) || f.ValueKind != JsonValueKind.Object)
                throw new ToolRequestException($"{at}.function", $"{at}.function must be an object");
            if (!f.TryGetProperty("name", out var n) || n.ValueKind != JsonValueKind.String || !NamePattern().IsMatch(n.GetString()!))
                throw new ToolRequestException($"{at}.function.name", $"{at}.function.name must be 1–64 letters, digits, '_', '.' or '-'");
            var name = n.GetString()!;
            if (!names.Add(name)) throw new ToolRequestException($"{at}.function.name", $"tool '{name}' is defined twice");
            string? description = null;
            if (f.TryGetProperty("description", out var d))
            {
                if (d.ValueKind == JsonValueKind.String) description = d.GetString();
                else if (d.ValueKind != JsonValueKind.Null) throw new ToolRequestException($"{at}.function.description", $"{at}.function.description must be a string");
            }
            JsonElement? parameters = null;
            if (f.TryGetProperty("parameters", out var p) && p.ValueKind != JsonValueKind.Null)
            {
                if (p.ValueKind != JsonValueKind.Object) throw new ToolRequestException($"{at}.function.parameters", $"{at}.function.parameters must be a JSON Schema object");
                parameters = p.Clone();
            }
            result.Add(new ToolFunction(name, description, parameters));
        }
        return result;
    }

    /// <summary>tool_choice against the tools given: absent means "auto" with tools and "none" without (as OpenAI).</summary>
    public static ToolChoice ParseChoice(JsonElement? choice, IReadOnlyList<ToolFunction> tools)
    {
        if (choice is not { } c || c.ValueKind is JsonValueKind.Null or JsonValueKind.Undefined)
            return tools.Count > 0 ? ToolChoice.Auto : ToolChoice.None;
        ToolChoice parsed;
        if (c.ValueKind == JsonValueKind.String)
        {
            parsed = c.GetString() switch
            {
                "none" => ToolChoice.None,
                "auto" => ToolChoice.Auto,
                "required" => ToolChoice.Required,
                var s => throw new ToolRequestException("tool_choice", $"tool_choice must be \"none\", \"auto\", \"required\" or a function, not \"{s}\""),
            };
        }
        else if (c.ValueKind == JsonValueKind.Object
                 && c.TryGetProperty("type", out var type) && type.ValueKind == JsonValueKind.String && type.GetString() == "function"
                 && c.TryGetProperty("function", out var f) && f.ValueKind == JsonValueKind.Object
                 && f.TryGetProperty("name", out var n) && n.ValueKind == JsonValueKind.String)
        {
            var name = n.GetString()!;
            if (!tools.Any(t => t.Name == name)) throw new ToolRequestException("tool_choice", $"tool_choice names '{name}', which is not among the tools");
            parsed = new ToolChoice(ToolChoiceMode.Named, name);
        }
        else throw new ToolRequestException("tool_choice", "tool_choice must be a string or {\"type\": \"function\", \"function\": {\"name\": …}}");
        if (parsed.Mode != ToolChoiceMode.None && tools.Count == 0)
            throw new ToolRequestException("tool_choice", "tool_choice needs tools");
        return parsed;
    }
}
