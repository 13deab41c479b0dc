using System.Text.Json;
using SmoaServe.Text;

namespace SmoaServe.Server;

/// <summary>Sampling and streaming fields shared by chat and legacy completions.</summary>
/// <param name="TopK">vLLM extension; 0 (or -1 in the request) = off.</param>
/// <param name="IgnoreEos">vLLM extension: keep generating past EOS (benchmarks).</param>
public sealed record GenerationFields(int? MaxTokens, float Temperature, float TopP, long? Seed, IReadOnlyList<string> Stop, bool Stream, bool IncludeUsage,
    int TopK = 0, bool IgnoreEos = false);

public sealed record ChatRequest(string Model, IReadOnlyList<ChatMessage> Messages, GenerationFields Generation);

/// <summary>Exactly one of <see cref="PromptText"/> / <see cref="PromptIds"/> is set.</summary>
public sealed record CompletionRequest(string Model, string? PromptText, IReadOnlyList<int>? PromptIds, GenerationFields Generation);

public sealed record TokenizeRequest(string? Model, string? Prompt, IReadOnlyList<ChatMessage>? Messages, bool AddGenerationPrompt, bool AddSpecialTokens);

public sealed record DetokenizeRequest(string? Model, IReadOnlyList<int> Tokens);

/// <summary>
/// Parses request bodies by hand so that every malformed body or wrongly typed field is a 400 naming the field
/// (never an exception escaping, never a silent default for a wrong type). JSON null counts as absent.
/// </summary>
public static class RequestParser
{
    /// <summary>Roles a chat message may have (OpenAI's).</summary>
    public static readonly IReadOnlySet<string> ChatRoles = new HashSet<string>(StringComparer.Ordinal) { "system", "developer", "user", "assistant", "tool", "function" };

    /// <summary>
    /// The body as a JSON object, parsed in place from the buffer it was read into (<see cref="RequestBody"/>); document and
    /// buffer are released when the response completes, so nothing of the body outlives the request.
    /// </summary>
    /// <param name="largeBodyCheck">run over a large body's bytes before it is parsed (e.g. <see cref="PromptTokens.LargeBodyCheck"/>)</param>
    public static async Task<JsonElement> ReadObjectAsync(HttpRequest request, CancellationToken ct, LargeBodyCheck? largeBodyCheck = null)
    {
        var body = await RequestBody.ReadAsync(request, ct);
        request.HttpContext.Response.RegisterForDispose(body);
        JsonElement root;
        try
        {
            if (body.Json.Length <= RequestBody.PooledMaxBytes)
            {
                var doc = JsonDocument.Parse(body.Json, new JsonDocumentOptions { MaxDepth = 32 });
                body.Own(doc);
                root = doc.RootElement;
            }
            else
            {
                // a large body: its tokens are counted first (no allocation), since the parsed document's table (12 bytes per
                // token) grows through the shared array pool, which then keeps every size it handed out for a minute per
                // thread and core; and it is parsed without renting a body-sized table from that pool
                CheckTokenCount(body.Json.Span);
                largeBodyCheck?.Invoke(body.Json.Span);
                var reader = new Utf8JsonReader(body.Json.Span, new JsonReaderOptions { MaxDepth = 32 });
                root = JsonElement.ParseValue(ref reader);
                if (reader.Read()) throw new JsonException("trailing data after the JSON value", null, 0, reader.BytesConsumed);
            }
        }
        catch (JsonException e)
        {
            throw ApiException.BadRequest($"The request body is not valid JSON (line {e.LineNumber + 1}, byte {e.BytePositionInLine + 1}).");
        }
        if (root.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest("The request body must be a JSON object.");
        return root;
    }

    /// <summary>A check of a large body's raw JSON before a document is built for it; throws to refuse the request.</summary>
    public delegate void LargeBodyCheck(ReadOnlySpan<byte> json);

    /// <summary>Most JSON tokens a request body may hold: a prompt of 256K token ids fits, a million-element array does not.</summary>
    public const int MaxJsonTokens = 256 * 1024 + 4096;

    private static void CheckTokenCount(ReadOnlySpan<byte> json)
    {
        var reader = new Utf8JsonReader(json, new JsonReaderOptions { MaxDepth = 32 });
        int tokens = 0;
        while (reader.Read())
            if (++tokens > MaxJsonTokens)
                throw ApiException.BadRequest($"The request body holds more than {MaxJsonTokens} JSON values; no request needs that many.");
    }

    public static ChatRequest ParseChat(JsonElement body)
    {
        var f = new Fields(body);
        string model = f.RequiredString("model");
        var messages = ParseMessages(f, "messages", required: true)!;
        if (messages.Count == 0) throw ApiException.BadRequest("'messages' must not be empty.", "messages");
        int? maxTokens = f.OptionalInt("max_completion_tokens") ?? f.OptionalInt("max_tokens");
        string? maxName = f.Has("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
        return new ChatRequest(model, messages, ParseGeneration(f, maxTokens, maxName));
    }

    public static CompletionRequest ParseCompletion(JsonElement body)
    {
        var f = new Fields(body);
        string model = f.RequiredString("model");
        var (text, ids) = ParsePrompt(f);
        int maxTokens = f.OptionalInt("max_tokens") ?? 16; // the OpenAI / vLLM default for legacy completions
        if (f.OptionalBool("echo") == true) throw ApiException.BadRequest("'echo' is not supported.", "echo");
        if (f.Has("suffix")) throw ApiException.BadRequest("'suffix' is not supported.", "suffix");
        return new CompletionRequest(model, text, ids, ParseGeneration(f, maxTokens, "max_tokens"));
    }

    public static TokenizeRequest ParseTokenize(JsonElement body)
    {
        var f = new Fields(body);
        string? model = f.OptionalString("model");
        var messages = ParseMessages(f, "messages", required: false);
        string? prompt = f.OptionalString("prompt");
        if ((messages is null) == (prompt is null)) throw ApiException.BadRequest("Give exactly one of 'prompt' and 'messages'.", messages is null ? "prompt" : "messages");
        bool addGenerationPrompt = f.OptionalBool("add_generation_prompt") ?? true;
        bool addSpecial = f.OptionalBool("add_special_tokens") ?? messages is null; // vLLM: true for prompts, false for chat
        return new TokenizeRequest(model, prompt, messages, addGenerationPrompt, addSpecial);
    }

    public static DetokenizeRequest ParseDetokenize(JsonElement body)
    {
        var f = new Fields(body);
        var tokens = f.Get("tokens") is { } t ? ParseIds(t, "tokens") : throw ApiException.BadRequest("'tokens' is required.", "tokens");
        return new DetokenizeRequest(f.OptionalString("model"), tokens);
    }

    private static GenerationFields ParseGeneration(Fields f, int? maxTokens, string maxName)
    {
        if (maxTokens is < 1) throw ApiException.BadRequest($"'{maxName}' must be at least 1, got {maxTokens}.", maxName);
        double temperature = f.OptionalDouble("temperature") ?? 1.0;
        if (temperature is < 0 or > 2) throw ApiException.BadRequest($"'temperature' must be in [0, 2], got {temperature}.", "temperature");
        double topP = f.OptionalDouble("top_p") ?? 1.0;
        if (topP is <= 0 or > 1) throw ApiException.BadRequest($"'top_p' must be in (0, 1], got {topP}.", "top_p");
        long? seed = f.OptionalLong("seed");
        int topK = f.OptionalInt("top_k") ?? 0;
        if (topK < -1) throw ApiException.BadRequest($"'top_k' must be -1 (off) or >= 0, got {topK}.", "top_k");
        int n = f.OptionalInt("n") ?? 1;
        if (n != 1) throw ApiException.BadRequest($"Only n=1 is supported, got {n}.", "n");
        if (f.OptionalBool("logprobs") == true || f.Get("logprobs") is { ValueKind: JsonValueKind.Number })
            throw ApiException.BadRequest("'logprobs' is not supported.", "logprobs");
        var stop = ParseStop(f);
        bool stream = f.OptionalBool("stream") ?? false;
        bool includeUsage = false;
        if (f.Get("stream_options") is { } so)
        {
            if (so.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest("'stream_options' must be an object.", "stream_options");
            includeUsage = new Fields(so, "stream_options.").OptionalBool("include_usage") ?? false;
        }
        bool ignoreEos = f.OptionalBool("ignore_eos") ?? false;
        return new GenerationFields(maxTokens, (float)temperature, (float)topP, seed, stop, stream, includeUsage, Math.Max(topK, 0), ignoreEos);
    }

    private static IReadOnlyList<string> ParseStop(Fields f)
    {
        switch (f.Get("stop"))
        {
            case null: return [];
            case { ValueKind: JsonValueKind.String } s: return StringOf(s, "stop") is { Length: > 0 } one ? [one] : [];
            case { ValueKind: JsonValueKind.Array } a:
                var list = new List<string>();
                foreach (var item in a.EnumerateArray())
                {
                    if (item.ValueKind != JsonValueKind.String) throw ApiException.BadRequest("'stop' must be a string or a list of strings.", "stop");
                    if (StringOf(item, "stop") is { Length: > 0 } s) list.Add(s);
                }
                if (list.Count > 16) throw ApiException.BadRequest("'stop' may hold at most 16 strings.", "stop");
                return list;
            default: throw ApiException.BadRequest("'stop' must be a string or a list of strings.", "stop");
        }
    }

    /// <summary>A string, a list of token ids, or a one-element list of either (batches are not supported).</summary>
    private static (string? Text, IReadOnlyList<int>? Ids) ParsePrompt(Fields f)
    {
        var p = f.Get("prompt") ?? throw ApiException.BadRequest("'prompt' is required.", "prompt");
        if (p.ValueKind == JsonValueKind.String) return (StringOf(p, "prompt"), null);
        if (p.ValueKind != JsonValueKind.Array) throw ApiException.BadRequest("'prompt' must be a string or a list of token ids.", "prompt");
        int count = p.GetArrayLength();
        if (count > 0 && p[0].ValueKind is JsonValueKind.String or JsonValueKind.Array)
        {
            if (count != 1) throw ApiException.BadRequest("Only one prompt per request is supported.", "prompt");
            var inner = p[0];
            return inner.ValueKind == JsonValueKind.String ? (StringOf(inner, "prompt"), null) : (null, ParseIds(inner, "prompt"));
        }
        return (null, ParseIds(p, "prompt"));
    }

    private static List<int> ParseIds(JsonElement array, string param)
    {
        if (array.ValueKind != JsonValueKind.Array) throw ApiException.BadRequest($"'{param}' must be a list of token ids.", param);
        var ids = new List<int>(array.GetArrayLength());
        foreach (var item in array.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.Number || !item.TryGetInt32(out int id) || id < 0)
                throw ApiException.BadRequest($"'{param}' must hold non-negative integer token ids.", param);
            ids.Add(id);
        }
        return ids;
    }

    private static List<ChatMessage>? ParseMessages(Fields f, string name, bool required)
    {
        var m = f.Get(name);
        if (m is null) return required ? throw ApiException.BadRequest($"'{name}' is required.", name) : null;
        if (m.Value.ValueKind != JsonValueKind.Array) throw ApiException.BadRequest($"'{name}' must be a list of messages.", name);
        var list = new List<ChatMessage>();
        int i = 0;
        foreach (var item in m.Value.EnumerateArray())
        {
            string path = $"{name}[{i++}]";
            if (item.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest($"'{path}' must be an object.", path);
            var mf = new Fields(item, path + ".");
            string role = mf.RequiredString("role");
            if (!ChatRoles.Contains(role))
                throw ApiException.BadRequest($"'{path}.role' must be one of {string.Join(", ", ChatRoles)}.", path + ".role");
            list.Add(new ChatMessage(role, MessageContent(mf.Get("content"), path + ".content")));
        }
        return list;
    }

    /// <summary>A string, null, or a list of {"type": "text", "text": ...} parts (concatenated).</summary>
    private static string MessageContent(JsonElement? content, string path)
    {
        switch (content)
        {
            case null: return "";
            case { ValueKind: JsonValueKind.String } s: return StringOf(s, path);
            case { ValueKind: JsonValueKind.Array } parts:
                var text = new System.Text.StringBuilder();
                foreach (var part in parts.EnumerateArray())
                {
                    if (part.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest($"'{path}' parts must be objects.", path);
                    var pf = new Fields(part, path + ".");
                    string type = pf.RequiredString("type");
                    if (type != "text") throw ApiException.BadRequest($"Content part type '{type}' is not supported (text only).", path);
                    text.Append(pf.RequiredString("text"));
                }
                return text.ToString();
            default: throw ApiException.BadRequest($"'{path}' must be a string or a list of content parts.", path);
        }
    }

    /// <summary>A JSON string as .NET text; a lone surrogate escape (e.g. "\ud800") cannot be read and is a 400, not a 500.</summary>
    private static string StringOf(JsonElement value, string param)
    {
        try { return value.GetString()!; }
        catch (InvalidOperationException) { throw ApiException.BadRequest($"'{param}' is not valid UTF-16 text (a lone surrogate escape).", param); }
    }

    /// <summary>Typed access to the fields of one JSON object; <paramref name="prefix"/> names nested objects in errors.</summary>
    private readonly struct Fields(JsonElement obj, string prefix = "")
    {
        public JsonElement? Get(string name) =>
            obj.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

        public bool Has(string name) => Get(name) is not null;

        public string RequiredString(string name) =>
            OptionalString(name) ?? throw ApiException.BadRequest($"'{prefix}{name}' is required.", prefix + name);

        public string? OptionalString(string name) => Get(name) switch
        {
            null => null,
            { ValueKind: JsonValueKind.String } v => StringOf(v, prefix + name),
            _ => throw Wrong(name, "a string"),
        };

        public bool? OptionalBool(string name) => Get(name) switch
        {
            null => null,
            { ValueKind: JsonValueKind.True } => true,
            { ValueKind: JsonValueKind.False } => false,
            _ => throw Wrong(name, "a boolean"),
        };

        public int? OptionalInt(string name) => Get(name) switch
        {
            null => null,
            { ValueKind: JsonValueKind.Number } v when v.TryGetInt32(out int i) => i,
            _ => throw Wrong(name, "an integer"),
        };

        public long? OptionalLong(string name) => Get(name) switch
        {
            null => null,
            { ValueKind: JsonValueKind.Number } v when v.TryGetInt64(out long i) => i,
            _ => throw Wrong(name, "an integer"),
        };

        public double? OptionalDouble(string name) => Get(name) switch
        {
            null => null,
            { ValueKind: JsonValueKind.Number } v when v.TryGetDouble(out double d) && double.IsFinite(d) => d,
            _ => throw Wrong(name, "a number"),
        };

        private ApiException Wrong(string name, string what) =>
            ApiException.BadRequest($"'{prefix}{name}' must be {what}.", prefix + name);
    }
}
