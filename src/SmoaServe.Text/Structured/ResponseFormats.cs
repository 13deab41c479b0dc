using System.Text.Json;

namespace SmoaServe.Text.Structured;

/// <summary>A malformed response_format (→ HTTP 400 with param "response_format").</summary>
public sealed class ResponseFormatException(string message) : ArgumentException(message)
{
    public string Param => "response_format";
}

/// <summary>
/// Compiled grammars by schema text, least recently used dropped past the capacity. A grammar carries its token-mask
/// cache, so requests repeating a schema skip both the compile and the mask computations. Thread-safe.
/// </summary>
public sealed class GrammarCache(int capacity = 256)
{
    readonly Dictionary<string, LinkedListNode<(string Key, Grammar Grammar)>> _index = new(StringComparer.Ordinal);
    readonly LinkedList<(string Key, Grammar Grammar)> _order = new();
    readonly Lock _lock = new();

    public int Count { get { lock (_lock) return _index.Count; } }

    public Grammar GetOrAdd(string key, Func<Grammar> compile)
    {
        lock (_lock)
        {
            if (_index.TryGetValue(key, out var node))
            {
                _order.Remove(node);
                _order.AddFirst(node);
                return node.Value.Grammar;
            }
        }
        var grammar = compile();                   // outside the lock: compiling can take milliseconds
        lock (_lock)
        {
            if (_index.TryGetValue(key, out var raced)) return raced.Value.Grammar;
            _index[key] = _order.AddFirst((key, grammar));
            while (_index.Count > capacity)
            {
                _index.Remove(_order.Last!.Value.Key);
                _order.RemoveLast();
            }
            return grammar;
        }
    }
}

/// <summary>The OpenAI response_format field as an output grammar.</summary>
public static class ResponseFormats
{
    /// <summary>
    /// {"type": "text"} → null (unconstrained); {"type": "json_object"} → any JSON object;
    /// {"type": "json_schema", "json_schema": {"name": …, "schema": {…}, "strict": …}} → that schema.
    /// </summary>
    /// <exception cref="ResponseFormatException">the field is malformed</exception>
    /// <exception cref="UnsupportedSchemaException">the schema uses a feature outside the supported subset</exception>
    public static Grammar? Compile(JsonElement responseFormat, GrammarCache? cache = null, JsonGrammarOptions? options = null)
    {
        if (responseFormat.ValueKind is JsonValueKind.Null or JsonValueKind.Undefined) return null;
        if (responseFormat.ValueKind != JsonValueKind.Object || !responseFormat.TryGetProperty("type", out var type) || type.ValueKind != JsonValueKind.String)
            throw new ResponseFormatException("response_format must be an object with a string 'type'");
        switch (type.GetString())
        {
            case "text": return null;
            case "json_object":
                return cache is null ? JsonSchemaGrammar.AnyObject(options) : cache.GetOrAdd("json_object", () => JsonSchemaGrammar.AnyObject(options));
            case "json_schema":
                if (!responseFormat.TryGetProperty("json_schema", out var js) || js.ValueKind != JsonValueKind.Object)
                    throw new ResponseFormatException("response_format.json_schema must be an object");
                if (!js.TryGetProperty("schema", out var schema))
                    throw new ResponseFormatException("response_format.json_schema.schema is missing");
                if (schema.ValueKind is not (JsonValueKind.Object or JsonValueKind.True))
                    throw new ResponseFormatException("response_format.json_schema.schema must be a JSON Schema object");
                var copy = schema.Clone();
                return cache is null ? JsonSchemaGrammar.Compile(copy, options)
                    : cache.GetOrAdd("json_schema:" + schema.GetRawText(), () => JsonSchemaGrammar.Compile(copy, options));
            case var other:
                throw new ResponseFormatException($"response_format type '{other}' is not supported (text, json_object, json_schema)");
        }
    }
}
