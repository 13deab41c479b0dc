using System.Globalization;
using System.Text.Json;

namespace SmoaServe.Text.Tests.Structured;

/// <summary>
/// An independent JSON Schema validator for the subset the grammar compiler supports (type, enum, const, anyOf,
/// oneOf, allOf, local $ref, properties, required, additionalProperties, items, min/maxItems, min/maxLength),
/// written from the JSON Schema definitions, not from the compiler.
/// </summary>
internal static class SchemaValidator
{
    public static string? Validate(JsonElement instance, JsonElement schema) => Check(instance, schema, schema, "$");

    static string? Check(JsonElement x, JsonElement s, JsonElement root, string at)
    {
        if (s.ValueKind == JsonValueKind.True) return null;
        if (s.ValueKind == JsonValueKind.False) return $"{at}: schema false";
        if (s.TryGetProperty("$ref", out var r)) return Check(x, Resolve(root, r.GetString()!), root, at);
        if (s.TryGetProperty("allOf", out var all))
            foreach (var a in all.EnumerateArray()) if (Check(x, a, root, at) is { } e) return e;
        if (s.TryGetProperty("anyOf", out var any) && !any.EnumerateArray().Any(a => Check(x, a, root, at) is null))
            return $"{at}: matches no anyOf alternative";
        if (s.TryGetProperty("oneOf", out var one) && one.EnumerateArray().Count(a => Check(x, a, root, at) is null) != 1)
            return $"{at}: does not match exactly one oneOf alternative";
        if (s.TryGetProperty("type", out var t))
        {
            var types = t.ValueKind == JsonValueKind.Array ? t.EnumerateArray().Select(e => e.GetString()!).ToList() : [t.GetString()!];
            if (!types.Any(ty => IsType(x, ty))) return $"{at}: {x.ValueKind} is not of type {string.Join("|", types)}";
        }
        if (s.TryGetProperty("enum", out var en) && !en.EnumerateArray().Any(v => Equal(v, x))) return $"{at}: {x.GetRawText()} not in enum";
        if (s.TryGetProperty("const", out var c) && !Equal(c, x)) return $"{at}: {x.GetRawText()} is not the const";

        if (x.ValueKind == JsonValueKind.String)
        {
            var len = x.GetString()!.EnumerateRunes().Count();
            if (s.TryGetProperty("minLength", out var min) && len < min.GetInt32()) return $"{at}: string shorter than {min}";
            if (s.TryGetProperty("maxLength", out var max) && len > max.GetInt32()) return $"{at}: string longer than {max}";
        }
        if (x.ValueKind == JsonValueKind.Array)
        {
            var n = x.GetArrayLength();
            if (s.TryGetProperty("minItems", out var min) && n < min.GetInt32()) return $"{at}: fewer than {min} items";
            if (s.TryGetProperty("maxItems", out var max) && n > max.GetInt32()) return $"{at}: more than {max} items";
            if (s.TryGetProperty("items", out var items))
            {
                var i = 0;
                foreach (var item in x.EnumerateArray()) if (Check(item, items, root, $"{at}[{i++}]") is { } e) return e;
            }
        }
        if (x.ValueKind == JsonValueKind.Object)
        {
            var props = s.TryGetProperty("properties", out var p) ? p : default;
            if (s.TryGetProperty("required", out var req))
                foreach (var name in req.EnumerateArray())
                    if (!x.TryGetProperty(name.GetString()!, out _)) return $"{at}: required property '{name.GetString()}' missing";
            foreach (var member in x.EnumerateObject())
            {
                if (props.ValueKind == JsonValueKind.Object && props.TryGetProperty(member.Name, out var ps))
                {
                    if (Check(member.Value, ps, root, $"{at}.{member.Name}") is { } e) return e;
                }
                else if (s.TryGetProperty("additionalProperties", out var ap) && Check(member.Value, ap, root, $"{at}.{member.Name}") is { } e)
                    return $"{at}: additional property '{member.Name}' not allowed ({e})";
            }
        }
        return null;
    }

    static bool IsType(JsonElement x, string type) => type switch
    {
        "object" => x.ValueKind == JsonValueKind.Object,
        "array" => x.ValueKind == JsonValueKind.Array,
        "string" => x.ValueKind == JsonValueKind.String,
        "number" => x.ValueKind == JsonValueKind.Number,
        "integer" => x.ValueKind == JsonValueKind.Number && IsIntegral(x.GetRawText()),
        "boolean" => x.ValueKind is JsonValueKind.True or JsonValueKind.False,
        "null" => x.ValueKind == JsonValueKind.Null,
        _ => throw new ArgumentException(type),
    };

    static bool IsIntegral(string raw)
    {
        if (decimal.TryParse(raw, NumberStyles.Float, CultureInfo.InvariantCulture, out var d)) return d == decimal.Truncate(d);
        var v = double.Parse(raw, CultureInfo.InvariantCulture);
        return v == Math.Floor(v);
    }

    static bool Equal(JsonElement a, JsonElement b)
    {
        if (a.ValueKind != b.ValueKind) return false;
        switch (a.ValueKind)
        {
            case JsonValueKind.Number:
                return decimal.TryParse(a.GetRawText(), NumberStyles.Float, CultureInfo.InvariantCulture, out var x)
                       && decimal.TryParse(b.GetRawText(), NumberStyles.Float, CultureInfo.InvariantCulture, out var y)
                    ? x == y : a.GetDouble() == b.GetDouble();
            case JsonValueKind.String: return a.GetString() == b.GetString();
            case JsonValueKind.Array:
                return a.GetArrayLength() == b.GetArrayLength() && a.EnumerateArray().Zip(b.EnumerateArray()).All(p => Equal(p.First, p.Second));
            case JsonValueKind.Object:
                var pa = a.EnumerateObject().ToList();
                var pb = b.EnumerateObject().ToList();
                return pa.Count == pb.Count && pa.All(p => b.TryGetProperty(p.Name, out var v) && Equal(p.Value, v));
            default: return true;
        }
    }

    static JsonElement Resolve(JsonElement root, string reference)
    {
        if (reference == "#") return root;
        var node = root;
        foreach (var part in reference[2..].Split('/')) node = node.GetProperty(part.Replace("~1", "/").Replace("~0", "~"));
        return node;
    }
}
