using System.Text;
using System.Text.Json;

namespace SmoaServe.Text.Structured;

/// <summary>
/// Compiles JSON Schemas into output grammars. Supported: type (one or several), object (properties, required,
/// additionalProperties — only the listed properties are generated, in schema order), array (items, minItems,
/// maxItems), string (minLength, maxLength), number, integer, boolean, null, enum, const, anyOf/oneOf whose
/// alternatives start with different characters (e.g. a type or null), allOf with one member, and local $ref
/// (#/$defs/…, #/definitions/…) without recursion. Annotations (title, description, default, examples, …) are
/// ignored. Anything else raises <see cref="UnsupportedSchemaException"/> naming the keyword.
/// </summary>
public static class JsonSchemaGrammar
{
    public static Grammar Compile(JsonElement schema, JsonGrammarOptions? options = null)
    {
        options ??= JsonGrammarOptions.Default;
        options.Validate();
        var compiler = new SchemaCompiler(schema, options);
        return compiler.Build();
    }

    public static Grammar Compile(string schemaJson, JsonGrammarOptions? options = null)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(schemaJson); }
        catch (JsonException e) { throw new UnsupportedSchemaException("json", "#", $"the schema is not valid JSON: {e.Message}"); }
        using (doc) return Compile(doc.RootElement, options);
    }

    /// <summary>Any JSON object (OpenAI response_format json_object).</summary>
    public static Grammar AnyObject(JsonGrammarOptions? options = null)
    {
        options ??= JsonGrammarOptions.Default;
        options.Validate();
        var builder = new AutomatonBuilder(options.MaxStates);
        var rules = new JsonRules(builder, options);
        var root = rules.Root(rules.FreeObject(rules.AnyValue()));
        return new Grammar(builder.Build(root, options.MaxNestingDepth, depthBinds: true, options.MaxTableCells), "json_object");
    }

    /// <summary>Minimal JSON escaping of a string's characters (quotes, backslash, control characters), no quotes added.</summary>
    internal static byte[] EscapedUtf8(string s)
    {
        var sb = new StringBuilder(s.Length + 2);
        foreach (var ch in s)
        {
            switch (ch)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (ch < 0x20) sb.Append("\\u").Append(((int)ch).ToString("x4"));
                    else sb.Append(ch);
                    break;
            }
        }
        return new UTF8Encoding(false, throwOnInvalidBytes: true).GetBytes(sb.ToString());
    }

    /// <summary>Compact JSON text of a value, strings minimally escaped, numbers as written.</summary>
    internal static void WriteCanonical(StringBuilder sb, JsonElement v)
    {
        switch (v.ValueKind)
        {
            case JsonValueKind.String: sb.Append('"').Append(Encoding.UTF8.GetString(EscapedUtf8(v.GetString()!))).Append('"'); break;
            case JsonValueKind.Number: sb.Append(v.GetRawText()); break;
            case JsonValueKind.True: sb.Append("true"); break;
            case JsonValueKind.False: sb.Append("false"); break;
            case JsonValueKind.Null: sb.Append("null"); break;
            case JsonValueKind.Array:
                sb.Append('[');
                var first = true;
                foreach (var x in v.EnumerateArray()) { if (!first) sb.Append(','); first = false; WriteCanonical(sb, x); }
                sb.Append(']');
                break;
            case JsonValueKind.Object:
                sb.Append('{');
                first = true;
                foreach (var p in v.EnumerateObject())
                {
                    if (!first) sb.Append(',');
                    first = false;
                    sb.Append('"').Append(Encoding.UTF8.GetString(EscapedUtf8(p.Name))).Append("\":");
                    WriteCanonical(sb, p.Value);
                }
                sb.Append('}');
                break;
            default: throw new ArgumentException($"not a JSON value: {v.ValueKind}");
        }
    }
}

internal sealed class SchemaCompiler
{
    static readonly HashSet<string> Annotations = new(StringComparer.Ordinal)
    {
        "title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly",
        "writeOnly", "$defs", "definitions", "nullable", "discriminator", "$anchor",
    };

    static readonly HashSet<string> Supported = new(StringComparer.Ordinal)
    {
        "type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "properties", "required", "additionalProperties",
        "unevaluatedProperties", "items", "minItems", "maxItems", "uniqueItems", "minLength", "maxLength",
    };

    static readonly string[] ObjectKeywords = ["properties", "required", "additionalProperties", "unevaluatedProperties"];
    static readonly string[] ArrayKeywords = ["items", "minItems", "maxItems", "uniqueItems"];
    static readonly string[] StringKeywords = ["minLength", "maxLength"];
    static readonly string[] AllTypes = ["object", "array", "string", "number", "integer", "boolean", "null"];

    readonly JsonElement _root;
    readonly JsonGrammarOptions _options;
    readonly AutomatonBuilder _builder;
    readonly JsonRules _rules;
    readonly Dictionary<string, int> _refs = new(StringComparer.Ordinal);
    readonly HashSet<string> _resolving = new(StringComparer.Ordinal);

    public SchemaCompiler(JsonElement root, JsonGrammarOptions options)
        : this(root, options, new JsonRules(new AutomatonBuilder(options.MaxStates), options)) { }

    /// <summary>Compiles into an automaton under construction (several schemas can share one, e.g. tool arguments).</summary>
    public SchemaCompiler(JsonElement root, JsonGrammarOptions options, JsonRules rules)
    {
        _root = root;
        _options = options;
        _rules = rules;
        _builder = rules.Builder;
    }

    public Grammar Build()
    {
        var value = CompileRoot(level: 0);
        var start = _rules.Root(value);
        var automaton = _builder.Build(start, _options.MaxNestingDepth, depthBinds: _rules.UsesAnyValue, _options.MaxTableCells);
        return new Grammar(automaton, "json_schema");
    }

    /// <summary>The rule for the root schema, nested inside <paramref name="level"/> enclosing objects/arrays.</summary>
    public int CompileRoot(int level) => Compile(_root, "#", level);

    static UnsupportedSchemaException Unsupported(string keyword, string path, string why) =>
        new(keyword, path, $"JSON schema {why} (keyword '{keyword}' at '{path}')");

    int Compile(JsonElement s, string path, int level)
    {
        if (s.ValueKind == JsonValueKind.True) return _rules.AnyValue();
        if (s.ValueKind == JsonValueKind.False) throw Unsupported("false", path, "'false' matches nothing");
        if (s.ValueKind != JsonValueKind.Object) throw Unsupported("schema", path, "nodes must be objects or booleans");

        var keys = new HashSet<string>(StringComparer.Ordinal);
        foreach (var p in s.EnumerateObject())
        {
            if (!keys.Add(p.Name)) throw Unsupported(p.Name, path, "has a keyword twice");
            if (Annotations.Contains(p.Name) || p.Name.StartsWith("x-", StringComparison.Ordinal)) continue;
            if (!Supported.Contains(p.Name)) throw Unsupported(p.Name, path, $"keyword '{p.Name}' is not supported");
        }
        var constraints = keys.Where(k => !Annotations.Contains(k) && !k.StartsWith("x-", StringComparison.Ordinal)).ToList();

        if (s.TryGetProperty("$ref", out var r))
        {
            if (constraints.Count > 1) throw Unsupported("$ref", path, "'$ref' with sibling keywords is not supported");
            return Ref(r, path, level);
        }
        if (s.TryGetProperty("allOf", out var all))
        {
            if (all.ValueKind != JsonValueKind.Array || all.GetArrayLength() != 1 || constraints.Count > 1)
                throw Unsupported("allOf", path, "'allOf' is supported only with a single member and no sibling keywords");
            return Compile(all[0], path + "/allOf/0", level);
        }
        foreach (var kw in new[] { "anyOf", "oneOf" })
            if (s.TryGetProperty(kw, out var alts))
            {
                if (constraints.Count > 1) throw Unsupported(kw, path, $"'{kw}' with sibling keywords is not supported");
                if (alts.ValueKind != JsonValueKind.Array || alts.GetArrayLength() == 0) throw Unsupported(kw, path, $"'{kw}' must be a non-empty array");
                var starts = new List<int>();
                var i = 0;
                foreach (var alt in alts.EnumerateArray()) starts.Add(Compile(alt, $"{path}/{kw}/{i++}", level));
                // alternatives that are mutually exclusive by their first character make anyOf and oneOf the same
                return Union(starts, kw, path);
            }

        var types = Types(s, path);
        if (s.TryGetProperty("enum", out _) || s.TryGetProperty("const", out _)) return Enum(s, path, types, constraints);
        if (types.Contains("number")) types.Remove("integer");
        var rules = new List<int>();
        foreach (var t in types)
        {
            rules.Add(t switch
            {
                "object" => Object(s, path, level + 1),
                "array" => Array(s, path, level + 1),
                "string" => String(s, path),
                "number" => _rules.Number(integer: false),
                "integer" => _rules.Number(integer: true),
                "boolean" => _rules.Literals([[.. "true"u8], [.. "false"u8]]),
                "null" => _rules.Literals([[.. "null"u8]]),
                _ => throw new InvalidOperationException(t),
            });
        }
        return rules.Count == 1 ? rules[0] : Union(rules, "type", path);
    }

    /// <summary>The schema's types: "type" (string or array), else inferred from type-specific keywords, else all.</summary>
    static List<string> Types(JsonElement s, string path)
    {
        if (s.TryGetProperty("type", out var t))
        {
            var list = new List<string>();
            if (t.ValueKind == JsonValueKind.String) list.Add(t.GetString()!);
            else if (t.ValueKind == JsonValueKind.Array && t.GetArrayLength() > 0)
                foreach (var x in t.EnumerateArray())
                    list.Add(x.ValueKind == JsonValueKind.String ? x.GetString()! : throw Unsupported("type", path, "'type' entries must be strings"));
            else throw Unsupported("type", path, "'type' must be a string or a non-empty array of strings");
            foreach (var x in list)
                if (!AllTypes.Contains(x)) throw Unsupported("type", path, $"type '{x}' is not a JSON Schema type");
            return list.Distinct().ToList();
        }
        var inferred = new List<string>();
        if (ObjectKeywords.Any(k => s.TryGetProperty(k, out _))) inferred.Add("object");
        if (ArrayKeywords.Any(k => s.TryGetProperty(k, out _))) inferred.Add("array");
        if (StringKeywords.Any(k => s.TryGetProperty(k, out _))) inferred.Add("string");
        return inferred.Count > 0 ? inferred : AllTypes.ToList();
    }

    int Union(List<int> starts, string keyword, string path)
    {
        if (starts.Count == 1) return starts[0];
        try { return _builder.Union(starts); }
        catch (GrammarConflictException e)
        {
            throw Unsupported(keyword, path,
                $"'{keyword}' alternatives that can start with the same character ({GrammarConflictException.Describe(e.Byte)}) are not supported; " +
                "alternatives must differ in type (e.g. an object or null)");
        }
    }

    int Ref(JsonElement r, string path, int level)
    {
        if (r.ValueKind != JsonValueKind.String) throw Unsupported("$ref", path, "'$ref' must be a string");
        var reference = r.GetString()!;
        if (_refs.TryGetValue(reference, out var memo)) return memo;
        if (!_resolving.Add(reference)) throw Unsupported("$ref", path, $"recursive '$ref' ('{reference}') is not supported");
        var target = Resolve(reference, path);
        var rule = Compile(target, reference, level);
        _resolving.Remove(reference);
        return _refs[reference] = rule;
    }

    JsonElement Resolve(string reference, string path)
    {
        if (reference == "#") return _root;
        if (!reference.StartsWith("#/", StringComparison.Ordinal))
            throw Unsupported("$ref", path, $"only local references ('#/…') are supported, not '{reference}'");
        var node = _root;
        foreach (var raw in reference[2..].Split('/'))
        {
            var part = Uri.UnescapeDataString(raw).Replace("~1", "/").Replace("~0", "~");
            if (node.ValueKind == JsonValueKind.Object && node.TryGetProperty(part, out var next)) node = next;
            else if (node.ValueKind == JsonValueKind.Array && int.TryParse(part, out var i) && i >= 0 && i < node.GetArrayLength()) node = node[i];
            else throw Unsupported("$ref", path, $"reference '{reference}' does not resolve");
        }
        return node;
    }

    int Enum(JsonElement s, string path, List<string> types, List<string> constraints)
    {
        var other = constraints.FirstOrDefault(k => k is not ("enum" or "const" or "type"));
        if (other is not null) throw Unsupported(other, path, $"'{other}' together with enum/const is not supported");
        var values = new List<JsonElement>();
        if (s.TryGetProperty("const", out var c)) values.Add(c);
        if (s.TryGetProperty("enum", out var e))
        {
            if (e.ValueKind != JsonValueKind.Array) throw Unsupported("enum", path, "'enum' must be an array");
            var list = e.EnumerateArray().ToList();
            // with const as well, the value must be in both
            values = values.Count == 0 ? list : values.Where(v => list.Any(x => JsonEqual(x, v))).ToList();
        }
        values = values.Where(v => types.Any(t => HasType(v, t))).ToList();
        if (values.Count == 0) throw Unsupported(s.TryGetProperty("enum", out _) ? "enum" : "const", path, "enum/const allows no value of the schema's type");
        var literals = new List<byte[]>();
        foreach (var v in values)
        {
            var sb = new StringBuilder();
            try { JsonSchemaGrammar.WriteCanonical(sb, v); }
            catch (Exception ex) when (ex is InvalidOperationException or EncoderFallbackException or ArgumentException)
            {
                throw Unsupported("enum", path, $"enum value is not valid Unicode ({ex.Message})");
            }
            literals.Add(Encoding.UTF8.GetBytes(sb.ToString()));
        }
        return _rules.Literals(literals.DistinctBy(Convert.ToBase64String));
    }

    static bool HasType(JsonElement v, string type) => type switch
    {
        "object" => v.ValueKind == JsonValueKind.Object,
        "array" => v.ValueKind == JsonValueKind.Array,
        "string" => v.ValueKind == JsonValueKind.String,
        "number" => v.ValueKind == JsonValueKind.Number,
        "integer" => v.ValueKind == JsonValueKind.Number && decimal.TryParse(v.GetRawText(), System.Globalization.NumberStyles.Float,
                         System.Globalization.CultureInfo.InvariantCulture, out var d) && d == decimal.Truncate(d),
        "boolean" => v.ValueKind is JsonValueKind.True or JsonValueKind.False,
        "null" => v.ValueKind == JsonValueKind.Null,
        _ => false,
    };

    static bool JsonEqual(JsonElement a, JsonElement b) => JsonElement.DeepEquals(a, b);

    int Object(JsonElement s, string path, int level)
    {
        CheckDepth(path, level);
        var props = new List<(byte[] Key, int Value, bool Required)>();
        var required = new HashSet<string>(StringComparer.Ordinal);
        if (s.TryGetProperty("required", out var req))
        {
            if (req.ValueKind != JsonValueKind.Array) throw Unsupported("required", path, "'required' must be an array of strings");
            foreach (var x in req.EnumerateArray())
                required.Add(x.ValueKind == JsonValueKind.String ? x.GetString()! : throw Unsupported("required", path, "'required' must be an array of strings"));
        }
        bool closed = false;
        JsonElement? extraSchema = null;                  // additionalProperties as a schema: used only without listed properties
        if (s.TryGetProperty("additionalProperties", out var ap))
        {
            if (ap.ValueKind == JsonValueKind.False) closed = true;
            else if (ap.ValueKind is JsonValueKind.Object) extraSchema = ap;
            else if (ap.ValueKind != JsonValueKind.True) throw Unsupported("additionalProperties", path, "'additionalProperties' must be a boolean or a schema");
        }
        var hasProperties = false;
        if (s.TryGetProperty("properties", out var properties))
        {
            if (properties.ValueKind != JsonValueKind.Object) throw Unsupported("properties", path, "'properties' must be an object");
            var names = new HashSet<string>(StringComparer.Ordinal);
            foreach (var p in properties.EnumerateObject())
            {
                if (!names.Add(p.Name)) throw Unsupported("properties", path, $"property '{p.Name}' is listed twice");
                byte[] key;
                try { key = JsonSchemaGrammar.EscapedUtf8(p.Name); }
                catch (EncoderFallbackException) { throw Unsupported("properties", path, "a property name is not valid Unicode"); }
                props.Add((key, Compile(p.Value, $"{path}/properties/{Escape(p.Name)}", level), required.Contains(p.Name)));
                hasProperties = true;
            }
            foreach (var name in required)
                if (!names.Contains(name)) throw Unsupported("required", path, $"required property '{name}' is not in 'properties'");
        }
        else if (required.Count > 0) throw Unsupported("required", path, $"required property '{required.First()}' is not in 'properties'");

        if (hasProperties || closed) return _rules.Object(props);
        // no listed properties: any keys, values as additionalProperties says
        var value = extraSchema is { } extra ? Compile(extra, path + "/additionalProperties", level) : _rules.AnyValue();
        return _rules.FreeObject(value);
    }

    int Array(JsonElement s, string path, int level)
    {
        CheckDepth(path, level);
        if (s.TryGetProperty("uniqueItems", out var u) && u.ValueKind == JsonValueKind.True)
            throw Unsupported("uniqueItems", path, "'uniqueItems: true' is not supported");
        int min = Count(s, "minItems", path) ?? 0;
        int? max = Count(s, "maxItems", path);
        if (max < min) throw Unsupported("minItems", path, $"minItems {min} > maxItems {max} matches nothing");
        int item;
        if (!s.TryGetProperty("items", out var items)) item = _rules.AnyValue();
        else if (items.ValueKind == JsonValueKind.False)
        {
            if (min > 0) throw Unsupported("items", path, "'items: false' with minItems > 0 matches nothing");
            item = -1;
        }
        else if (items.ValueKind == JsonValueKind.Array) throw Unsupported("items", path, "tuple 'items' (an array of schemas) is not supported");
        else item = Compile(items, path + "/items", level);
        return _rules.Array(item, min, max);
    }

    int String(JsonElement s, string path)
    {
        int min = Count(s, "minLength", path) ?? 0;
        int? max = Count(s, "maxLength", path);
        if (max < min) throw Unsupported("minLength", path, $"minLength {min} > maxLength {max} matches nothing");
        return _rules.String(min, max);
    }

    static int? Count(JsonElement s, string keyword, string path)
    {
        if (!s.TryGetProperty(keyword, out var v)) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt64(out var n) || n < 0)
            throw Unsupported(keyword, path, $"'{keyword}' must be a non-negative integer");
        return (int)Math.Min(n, 1_000_000);
    }

    void CheckDepth(string path, int level)
    {
        if (level > _options.MaxNestingDepth)
            throw Unsupported("depth", path, $"nesting deeper than {_options.MaxNestingDepth} objects/arrays is not supported");
    }

    static string Escape(string name) => name.Replace("~", "~0").Replace("/", "~1");
}
