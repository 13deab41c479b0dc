using System.Text;
using System.Text.Json.Nodes;

namespace SmoaServe.Cli.Commands.Hostile;

/// <summary>One generated request: its fuzz class, method, path, body bytes and Content-Type.</summary>
public sealed record FuzzRequest(string Class, string Method, string Path, byte[]? Body, string? ContentType)
{
    public override string ToString() => $"{Class} {Method} {Path} {(Body is null ? "" : Body.Length > 160 ? Encoding.UTF8.GetString(Body, 0, 160) + "…" : Encoding.UTF8.GetString(Body))}";
}

/// <summary>
/// Hostile request bodies for the API, in classes: wrong types for every field, extreme values, deep JSON, text
/// encodings (invalid UTF-8, lone surrogates, NULs, UTF-16, byte order marks), byte-level mutations of valid bodies, and
/// huge bodies. Deterministic for a seed. A correct server answers each with a 2xx or an OpenAI-shaped 4xx.
/// </summary>
public sealed class FuzzRequests(string model, string? adapter, int seed = 1)
{
    public static readonly string[] Classes = ["types", "extremes", "deep", "encodings", "mutations", "huge"];

    private readonly Random _rng = new(seed);

    private JsonObject Valid(string path) => path switch
    {
        "/v1/chat/completions" => new JsonObject
        {
            ["model"] = Pick(model, adapter ?? model), ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = "Say hi" }),
            ["max_tokens"] = 2, ["temperature"] = 0, ["stream"] = _rng.Next(2) == 0,
        },
        "/v1/completions" => new JsonObject
        {
            ["model"] = Pick(model, adapter ?? model), ["prompt"] = "Once upon a time", ["max_tokens"] = 2, ["temperature"] = 0.7, ["top_p"] = 0.9, ["seed"] = 3,
        },
        "/tokenize" => new JsonObject { ["model"] = model, ["prompt"] = "hello there" },
        _ => new JsonObject { ["model"] = model, ["tokens"] = new JsonArray(1, 2, 3) },
    };

    private static readonly string[] Paths = ["/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"];

    private static readonly Dictionary<string, string[]> Fields = new()
    {
        ["/v1/chat/completions"] = ["model", "messages", "messages.0", "messages.0.role", "messages.0.content", "max_tokens", "max_completion_tokens",
            "temperature", "top_p", "top_k", "seed", "stop", "n", "stream", "stream_options", "stream_options.include_usage", "logprobs", "ignore_eos"],
        ["/v1/completions"] = ["model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "n", "stream", "echo", "suffix", "logprobs"],
        ["/tokenize"] = ["model", "prompt", "messages", "add_generation_prompt", "add_special_tokens"],
        ["/detokenize"] = ["model", "tokens", "tokens.0"],
    };

    /// <summary><paramref name="count"/> requests spread over the classes (round robin).</summary>
    public IEnumerable<FuzzRequest> Generate(int count)
    {
        for (int i = 0; i < count; i++) yield return Make(Classes[i % Classes.Length]);
    }

    public FuzzRequest Make(string cls)
    {
        string path = Paths[_rng.Next(Paths.Length)];
        var body = Valid(path);
        switch (cls)
        {
            case "types":
                Set(body, Field(path), WrongType());
                return Json(cls, path, body);
            case "extremes":
                Set(body, Field(path), Extreme(path));
                return Json(cls, path, body);
            case "deep":
            {
                int depth = Pick(8, 31, 33, 64, 1000, 100_000);
                string nested = _rng.Next(2) == 0 ? new string('[', depth) + "1" + new string(']', depth)
                    : string.Concat(Enumerable.Repeat("{\"a\":", depth)) + "1" + new string('}', depth);
                string text = _rng.Next(3) == 0 ? nested : body.ToJsonString().Insert(1, $"\"{Field(path).Split('.')[0]}\":{nested},");
                return new FuzzRequest(cls, "POST", path, Encoding.UTF8.GetBytes(text), "application/json");
            }
            case "encodings":
                return Encoding_(cls, path, body);
            case "mutations":
            {
                var text = new StringBuilder(body.ToJsonString());
                const string alphabet = "{}[]\":,0123456789-.eE truefalsnul\\u\u00e9\ud83e\udd16abc\0";
                for (int m = _rng.Next(1, 6); m > 0; m--)
                {
                    int at = _rng.Next(text.Length);
                    if (_rng.Next(2) == 0) text.Remove(at, 1);
                    else text.Insert(at, alphabet[_rng.Next(alphabet.Length)]);
                }
                return new FuzzRequest(cls, "POST", path, Encoding.UTF8.GetBytes(text.ToString()), "application/json");
            }
            case "huge":
                return Huge(cls, path, body);
            default:
                throw new ArgumentException(cls);
        }
    }

    private FuzzRequest Json(string cls, string path, JsonNode body) =>
        new(cls, "POST", path, Encoding.UTF8.GetBytes(body.ToJsonString()), Pick("application/json", "application/json; charset=utf-8", "text/plain", null));

    private string Field(string path) => Fields[path][_rng.Next(Fields[path].Length)];

    private JsonNode? WrongType() => _rng.Next(10) switch
    {
        0 => "str", 1 => 1, 2 => 1.5, 3 => true, 4 => null, 5 => new JsonArray(), 6 => new JsonObject(),
        7 => new JsonArray(1, "a", null), 8 => new JsonObject { ["a"] = new JsonArray(new JsonObject()) }, _ => false,
    };

    private JsonNode? Extreme(string path) => _rng.Next(22) switch
    {
        0 => 0, 1 => -1, 2 => int.MaxValue, 3 => 2147483648L, 4 => -2147483649L, 5 => long.MaxValue, 6 => JsonValue.Create(1e308),
        7 => JsonValue.Create(-1e308), 8 => JsonValue.Create(1e-320), 9 => JsonValue.Create(0.5), 10 => JsonValue.Create(3.7e38),
        11 => JsonNode.Parse("123456789012345678901234567890"), 12 => "", 13 => new string('x', 200_000),
        14 => new JsonArray(Enumerable.Range(0, 10_000).Select(i => (JsonNode?)("s" + i)).ToArray()),
        15 => new JsonArray(Enumerable.Range(0, 50_000).Select(i => (JsonNode?)(i % 1000)).ToArray()),
        16 => new JsonArray(-1, int.MaxValue, 1024, 1_000_000),
        17 => new JsonArray(Enumerable.Range(0, 5_000).Select(i => (JsonNode?)new JsonObject { ["role"] = "user", ["content"] = "m" + i }).ToArray()),
        18 => new JsonArray(),
        19 => JsonNode.Parse("-0"),
        20 => new JsonArray(new JsonObject { ["role"] = "user", ["content"] = new JsonArray(new JsonObject { ["type"] = "image_url", ["image_url"] = "x" }) }),
        _ => new JsonArray(new JsonObject { ["role"] = Pick("alien", "", "USER", "tool", "function"), ["content"] = "x" }),
    };

    private FuzzRequest Encoding_(string cls, string path, JsonObject body)
    {
        string json = body.ToJsonString();
        byte[] Utf8(string s) => Encoding.UTF8.GetBytes(s);
        byte[] WithRaw(byte[] raw)
        {
            // raw bytes spliced into a string value (the first ':"' after a key)
            var bytes = Utf8(json);
            int at = json.IndexOf(":\"", StringComparison.Ordinal);
            if (at < 0) return [.. raw, .. bytes];
            at = Encoding.UTF8.GetByteCount(json[..(at + 2)]);
            return [.. bytes[..at], .. raw, .. bytes[at..]];
        }
        return _rng.Next(12) switch
        {
            0 => new(cls, "POST", path, WithRaw([0xff, 0xfe]), "application/json"),
            1 => new(cls, "POST", path, WithRaw([0xc0, 0x80]), "application/json"),                      // overlong NUL
            2 => new(cls, "POST", path, WithRaw([0xed, 0xa0, 0x80]), "application/json"),                // a surrogate in UTF-8
            3 => new(cls, "POST", path, WithRaw([0xe2, 0x82]), "application/json"),                      // truncated sequence
            4 => new(cls, "POST", path, Utf8(json.Replace("\"user\"", "\"us\\ud800er\"").Replace("\"hello there\"", "\"\\udfff\"")
                .Replace("Once upon a time", "\\ud83e").Replace("Say hi", "\\udc00\\ud800")), "application/json"),
            5 => new(cls, "POST", path, Utf8(json.Replace("Say hi", "\\u0000\\u0000").Replace("Once upon a time", "a\\u0000b")), "application/json"),
            6 => new(cls, "POST", path, [0xEF, 0xBB, 0xBF, .. Utf8(json)], "application/json"),
            7 => new(cls, "POST", path, [0xFF, 0xFE, .. Encoding.Unicode.GetBytes(json)], "application/json; charset=utf-16"),
            8 => new(cls, "POST", path, Encoding.Unicode.GetBytes(json), "application/json"),
            9 => new(cls, "POST", path, Encoding.Latin1.GetBytes(json.Replace("Say hi", "caf\u00e9").Replace("hello", "h\u00e9llo")), "application/json; charset=latin1"),
            10 => new(cls, "POST", path, [.. Utf8(json), 0x00], "application/json"),
            _ => new(cls, "GET", "/v1/models/" + Uri.EscapeDataString(Pick("\u0000", "..%2F..%2Fetc", "\ud83e\udd16", new string('m', 5000), "%ff%fe")), null, null),
        };
    }

    private readonly Dictionary<(int, string), FuzzRequest> _huge = new();

    /// <summary>Huge bodies (several MB each) are built once per kind and path and then reused.</summary>
    private FuzzRequest Huge(string cls, string path, JsonObject body)
    {
        int kind = _rng.Next(6);
        if (!_huge.TryGetValue((kind, path), out var request)) _huge[(kind, path)] = request = MakeHuge(kind, cls, path, body);
        return request;
    }

    private FuzzRequest MakeHuge(int kind, string cls, string path, JsonObject body)
    {
        switch (kind)
        {
            case 0:
                body[path == "/v1/chat/completions" ? "messages" : "prompt"] = path == "/v1/chat/completions"
                    ? new JsonArray(new JsonObject { ["role"] = "user", ["content"] = Words(3_900_000) })
                    : Words(3_900_000);
                return Json(cls, path, body);
            case 1:
                body["model"] = new string('m', 3_900_000);
                return Json(cls, path, body);
            case 2:
                return new(cls, "POST", path, Encoding.UTF8.GetBytes(new string(' ', 3_900_000) + body.ToJsonString()), "application/json");
            case 3:
                return new(cls, "POST", path, Encoding.UTF8.GetBytes("{\"prompt\":\"" + new string('x', 6_000_000) + "\"}"), "application/json");   // over the body limit
            case 4:
                body[path == "/detokenize" ? "tokens" : "prompt"] = Placeholder;
                return Spliced(cls, path, body, "[" + string.Join(",", Enumerable.Repeat("1", 1_000_000)) + "]");
            default:
                body["messages"] = Placeholder;
                return Spliced(cls, path, body, "[" + string.Join(",", Enumerable.Repeat("""{"role":"user","content":"m"}""", 100_000)) + "]");
        }
    }

    private const string Placeholder = "@@huge@@";

    /// <summary>The body with the placeholder value replaced by raw JSON text (built as text: a million JsonNodes are slow).</summary>
    private FuzzRequest Spliced(string cls, string path, JsonObject body, string rawJson) =>
        new(cls, "POST", path, Encoding.UTF8.GetBytes(body.ToJsonString().Replace("\"" + Placeholder + "\"", rawJson)), "application/json");

    private static readonly Lazy<string> Prose = new(() => WordsOf(3_900_000));

    private static string Words(int chars) => chars == 3_900_000 ? Prose.Value : WordsOf(chars);

    private static string WordsOf(int chars)
    {
        const string sentence = "All work and no play makes a dull model. ";
        var sb = new StringBuilder(chars + sentence.Length);
        while (sb.Length < chars) sb.Append(sentence);
        return sb.ToString();
    }

    private static void Set(JsonObject body, string field, JsonNode? value)
    {
        try { SetPath(body, field, value); }
        catch (InvalidOperationException) { body[field.Split('.')[0]] = value?.DeepClone(); }
    }

    private static void SetPath(JsonObject body, string field, JsonNode? value)
    {
        var parts = field.Split('.');
        JsonNode? node = body;
        for (int i = 0; i < parts.Length - 1 && node is not null; i++)
            node = int.TryParse(parts[i], out int idx) ? (node is JsonArray a && idx < a.Count ? a[idx] : null) : node[parts[i]] ?? (node[parts[i]] = new JsonObject());
        string last = parts[^1];
        if (node is JsonArray arr && int.TryParse(last, out int j)) { if (j < arr.Count) arr[j] = value; }
        else if (node is JsonObject obj) obj[last] = value;
    }

    private T Pick<T>(params T[] options) => options[_rng.Next(options.Length)];
}
