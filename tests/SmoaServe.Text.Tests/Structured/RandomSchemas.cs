using System.Text.Json.Nodes;

namespace SmoaServe.Text.Tests.Structured;

/// <summary>Seeded random JSON Schemas of the supported subset (objects, arrays, strings, numbers, enums, anyOf, $ref …).</summary>
internal sealed class RandomSchemas(int seed)
{
    readonly Random _rng = new(seed);

    static readonly string[] Names =
    [
        "a", "name", "id", "x_1", "value", "items", "ключ", "quote\"d", "back\\slash", "tab\tkey", "emoji😀", "sp ace",
        "n", "na", "nam", "type", "enabled", "count", "", "日本",
    ];
    static readonly string[] Words = ["red", "green", "blue", "a\"b", "é", "😀", "", "x y", "line\nbreak", "null", "1"];

    public JsonObject Next()
    {
        var root = Schema(0, allowRef: true);
        if (root["$ref"] is null && _rng.Next(5) == 0)
        {
            // a definition used from a property
            var def = Schema(1, allowRef: false);
            var wrapper = new JsonObject
            {
                ["type"] = "object",
                ["$defs"] = new JsonObject { ["Item"] = def },
                ["properties"] = new JsonObject { ["first"] = new JsonObject { ["$ref"] = "#/$defs/Item" }, ["rest"] = root },
                ["required"] = new JsonArray("first"),
            };
            return wrapper;
        }
        return root;
    }

    JsonObject Schema(int depth, bool allowRef)
    {
        var kind = _rng.Next(depth >= 3 ? 8 : 14);
        return kind switch
        {
            0 => String(),
            1 => new JsonObject { ["type"] = "number" },
            2 => new JsonObject { ["type"] = "integer" },
            3 => new JsonObject { ["type"] = "boolean" },
            4 => new JsonObject { ["type"] = "null" },
            5 => Enum(),
            6 => new JsonObject { ["const"] = Value(depth) },
            7 => new JsonObject { ["type"] = new JsonArray(Pick(["string", "integer", "boolean"]), "null") },
            8 or 9 or 10 => Object(depth),
            11 or 12 => Array(depth),
            _ => AnyOf(depth),
        };
    }

    JsonObject String()
    {
        var s = new JsonObject { ["type"] = "string" };
        var min = _rng.Next(3) == 0 ? _rng.Next(4) : 0;
        if (min > 0) s["minLength"] = min;
        if (_rng.Next(2) == 0) s["maxLength"] = min + _rng.Next(12);
        if (_rng.Next(4) == 0) s["description"] = "free text";
        return s;
    }

    JsonObject Enum()
    {
        var values = new JsonArray();
        var n = 1 + _rng.Next(4);
        for (var i = 0; i < n; i++) values.Add(Value(2));
        var s = new JsonObject { ["enum"] = values };
        if (_rng.Next(3) == 0) { s["type"] = "string"; values.Add(Pick(Words)); }
        return s;
    }

    JsonNode? Value(int depth) => _rng.Next(depth >= 2 ? 5 : 7) switch
    {
        0 => JsonValue.Create(Pick(Words)),
        1 => JsonValue.Create(_rng.Next(-50, 1000)),
        2 => JsonValue.Create(Math.Round(_rng.NextDouble() * 100 - 50, 3)),
        3 => JsonValue.Create(_rng.Next(2) == 0),
        4 => null,
        5 => new JsonObject { [Pick(Names)] = Value(depth + 1) },
        _ => new JsonArray(Value(depth + 1), Value(depth + 1)),
    };

    JsonObject Object(int depth)
    {
        var props = new JsonObject();
        var required = new JsonArray();
        var n = _rng.Next(5);
        var used = new HashSet<string>();
        for (var i = 0; i < n; i++)
        {
            var name = Pick(Names);
            if (!used.Add(name)) continue;
            props[name] = Schema(depth + 1, allowRef: false);
            if (_rng.Next(2) == 0) required.Add(name);
        }
        var s = new JsonObject { ["type"] = "object", ["properties"] = props };
        if (required.Count > 0) s["required"] = required;
        switch (_rng.Next(3))
        {
            case 0: s["additionalProperties"] = false; break;
            case 1: s["additionalProperties"] = true; break;
        }
        if (n == 0 && _rng.Next(2) == 0) s["additionalProperties"] = Schema(depth + 1, allowRef: false);
        return s;
    }

    JsonObject Array(int depth)
    {
        var s = new JsonObject { ["type"] = "array", ["items"] = Schema(depth + 1, allowRef: false) };
        var min = _rng.Next(3) == 0 ? _rng.Next(3) : 0;
        if (min > 0) s["minItems"] = min;
        if (_rng.Next(3) != 0) s["maxItems"] = min + _rng.Next(4);
        return s;
    }

    JsonObject AnyOf(int depth)
    {
        // alternatives of different types (their first characters differ)
        var kinds = new List<Func<JsonObject>>
        {
            () => String(),
            () => new JsonObject { ["type"] = "integer" },
            () => new JsonObject { ["type"] = "boolean" },
            () => new JsonObject { ["type"] = "null" },
            () => Object(depth + 1),
            () => Array(depth + 1),
        };
        var alts = new JsonArray();
        foreach (var i in Enumerable.Range(0, kinds.Count).OrderBy(_ => _rng.Next()).Take(2 + _rng.Next(2))) alts.Add(kinds[i]());
        return new JsonObject { [_rng.Next(2) == 0 ? "anyOf" : "oneOf"] = alts };
    }

    T Pick<T>(T[] items) => items[_rng.Next(items.Length)];
}
