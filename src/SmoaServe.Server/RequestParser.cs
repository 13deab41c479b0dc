using System.Text.Json;
using SmoaServe.Text;
using SmoaServe.Text.Tools;

namespace SmoaServe.Server;

/// <summary>Sampling and streaming fields shared by chat and legacy completions.</summary>
/// <param name="TopK">vLLM extension; 0 (or -1 in the request) = off.</param>
/// <param name="IgnoreEos">vLLM extension: keep generating past EOS (benchmarks).</param>
public sealed record GenerationFields(int? MaxTokens, float Temperature, float TopP, long? Seed, IReadOnlyList<string> Stop, bool Stream, bool IncludeUsage,
    int TopK = 0, bool IgnoreEos = false)
{
    /// <summary>Choices per prompt.</summary>
    public int N { get; init; } = 1;
    public double MinP { get; init; }
    public float PresencePenalty { get; init; }
    public float FrequencyPenalty { get; init; }
    public float RepetitionPenalty { get; init; } = 1f;
    public IReadOnlyDictionary<int, float> LogitBias { get; init; } = new Dictionary<int, float>();
    /// <summary>Token ids that end a choice like EOS (stop given as token ids, or vLLM's stop_token_ids).</summary>
    public IReadOnlyList<int> StopTokenIds { get; init; } = [];
    /// <summary>Alternatives per generated token when logprobs are requested; null = no logprobs.</summary>
    public int? TopLogprobs { get; init; }
    /// <summary>The end user the caller names (OpenAI's user / safety_identifier): logged with the request.</summary>
    public string? User { get; init; }
}

/// <summary>The model a request names: <see cref="Model"/>, or LoRAX's adapter_id (then model is absent or the base).</summary>
public sealed record ModelChoice(string? Model, string? AdapterId)
{
    /// <summary>What the request runs on, as the caller named it.</summary>
    public string Name => AdapterId ?? Model!;
}

/// <summary>A chat request; <see cref="RawMessages"/> (valid while the request runs) feeds templates that render tool calls.</summary>
public sealed record ChatRequest(string Model, IReadOnlyList<ChatMessage> Messages, GenerationFields Generation)
{
    public ModelChoice? Choice { get; init; }
    public JsonElement? RawMessages { get; init; }
    /// <summary>The tools array as given (passed to the chat template) and its functions.</summary>
    public JsonElement? ToolsJson { get; init; }
    public IReadOnlyList<ToolFunction> Tools { get; init; } = [];
    public ToolChoice ToolChoice { get; init; } = ToolChoice.None;
    public bool ParallelToolCalls { get; init; } = true;
    public JsonElement? ResponseFormat { get; init; }
    /// <summary>Messages carry tool calls or tool results, or tools are given: rendered with every field.</summary>
    public bool UsesTools => Tools.Count > 0 || HasToolMessages;
    public bool HasToolMessages { get; init; }
}

/// <summary>One prompt of a completions request: exactly one of <see cref="Text"/> / <see cref="Ids"/> is set.</summary>
public sealed record PromptInput(string? Text, IReadOnlyList<int>? Ids);

/// <summary>Exactly one of <see cref="PromptText"/> / <see cref="PromptIds"/> is set (the first prompt; <see cref="Prompts"/> holds all).</summary>
public sealed record CompletionRequest(string Model, string? PromptText, IReadOnlyList<int>? PromptIds, GenerationFields Generation)
{
    public ModelChoice? Choice { get; init; }
    public IReadOnlyList<PromptInput> Prompts { get; init; } = [new(PromptText, PromptIds)];
    public bool Echo { get; init; }
    public JsonElement? ResponseFormat { get; init; }
}

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

    /// <summary>Fields of both endpoints that are honoured (see docs/openai-api.md).</summary>
    private static readonly string[] CommonFields =
    [
        "model", "adapter_id", "max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "n", "stop", "stop_token_ids", "stream",
        "stream_options", "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias", "logprobs", "user", "ignore_eos",
        "response_format", "best_of", "service_tier", "store", "safety_identifier",
    ];

    private static readonly HashSet<string> ChatFields = new(CommonFields.Concat(
        ["messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice", "parallel_tool_calls", "modalities"]), StringComparer.Ordinal);

    private static readonly HashSet<string> CompletionFields = new(CommonFields.Concat(["prompt", "echo", "suffix"]), StringComparer.Ordinal);

    /// <summary>OpenAI fields that change what the model does and that this server cannot do: each is a 400 naming it.</summary>
    private static readonly Dictionary<string, string> Unsupported = new(StringComparer.Ordinal)
    {
        ["functions"] = "'functions' (deprecated) is not supported; use 'tools'.",
        ["function_call"] = "'function_call' (deprecated) is not supported; use 'tool_choice'.",
        ["audio"] = "'audio' is not supported: this model outputs text only.",
        ["prediction"] = "'prediction' (predicted outputs) is not supported.",
        ["reasoning_effort"] = "'reasoning_effort' is not supported: this model does not reason before answering.",
        ["verbosity"] = "'verbosity' is not supported.",
        ["web_search_options"] = "'web_search_options' is not supported: the server has no web search.",
        ["metadata"] = "'metadata' is not supported: completions are not stored.",
        ["prompt_cache_key"] = "'prompt_cache_key' is not supported.",
        ["suffix"] = "'suffix' (insertion) is not supported.",
    };

    /// <summary>Every field must be honoured or refused: unknown and unsupported ones are a 400 naming them (as OpenAI answers unknown ones).</summary>
    private static void CheckFields(JsonElement body, HashSet<string> known)
    {
        foreach (var p in body.EnumerateObject())
        {
            if (p.Value.ValueKind == JsonValueKind.Null) continue;
            if (Unsupported.TryGetValue(p.Name, out var why)) throw ApiException.BadRequest(why, p.Name);
            if (!known.Contains(p.Name))
                throw ApiException.BadRequest($"Unrecognized request argument supplied: {(p.Name.Length > 64 ? p.Name[..64] + "…" : p.Name)}", p.Name.Length > 64 ? null : p.Name);
        }
    }

    /// <summary>model, or LoRAX's adapter_id with model absent or naming the base (checked by the endpoint).</summary>
    private static ModelChoice ParseModel(Fields f)
    {
        string? model = f.OptionalString("model");
        string? adapter = f.OptionalString("adapter_id");
        if (adapter is { Length: 0 }) throw ApiException.BadRequest("'adapter_id' must not be empty.", "adapter_id");
        if (model is null && adapter is null) throw ApiException.BadRequest("'model' is required.", "model");
        return new ModelChoice(model, adapter);
    }

    public static ChatRequest ParseChat(JsonElement body)
    {
        CheckFields(body, ChatFields);
        var f = new Fields(body);
        var choice = ParseModel(f);
        var messages = ParseMessages(f, "messages", required: true)!;
        if (messages.Count == 0) throw ApiException.BadRequest("'messages' must not be empty.", "messages");
        int? maxTokens = f.OptionalInt("max_completion_tokens") ?? f.OptionalInt("max_tokens");
        string? maxName = f.Has("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
        var generation = ParseGeneration(f, maxTokens, maxName);
        // chat logprobs: a boolean, and top_logprobs alternatives (0..20) only with it
        bool logprobs = f.OptionalBool("logprobs") ?? false;
        int? top = f.OptionalInt("top_logprobs");
        if (top is < 0 or > 20) throw ApiException.BadRequest($"'top_logprobs' must be in [0, 20], got {top}.", "top_logprobs");
        if (top is not null && !logprobs) throw ApiException.BadRequest("'top_logprobs' needs 'logprobs': true.", "top_logprobs");
        generation = generation with { TopLogprobs = logprobs ? top ?? 0 : null };
        if (f.Get("modalities") is { } modalities
            && (modalities.ValueKind != JsonValueKind.Array || modalities.EnumerateArray().Any(m => m.ValueKind != JsonValueKind.String || m.GetString() != "text")))
            throw ApiException.BadRequest("'modalities' may only be [\"text\"]: this model outputs text only.", "modalities");

        IReadOnlyList<ToolFunction> tools;
        ToolChoice toolChoice;
        try
        {
            tools = f.Get("tools") is { } t ? ToolDefinitions.Parse(t) : [];
            toolChoice = ToolDefinitions.ParseChoice(f.Get("tool_choice"), tools);
        }
        catch (ToolRequestException e) { throw ApiException.BadRequest(e.Message, e.Param); }
        bool hasToolMessages = f.Get("messages") is { } raw && raw.EnumerateArray().Any(m =>
            m.ValueKind == JsonValueKind.Object && (m.TryGetProperty("tool_calls", out var c) && c.ValueKind != JsonValueKind.Null
                || m.TryGetProperty("role", out var r) && r.ValueKind == JsonValueKind.String && r.GetString() == "tool"));
        var responseFormat = f.Get("response_format");
        if (responseFormat is not null && toolChoice.ForcesCall && !IsTextFormat(responseFormat.Value))
            throw ApiException.BadRequest("'response_format' cannot constrain the output while 'tool_choice' forces a tool call.", "response_format");
        return new ChatRequest(choice.Name, messages, generation)
        {
            Choice = choice, RawMessages = f.Get("messages"), ToolsJson = tools.Count > 0 ? f.Get("tools") : null, Tools = tools, ToolChoice = toolChoice,
            ParallelToolCalls = f.OptionalBool("parallel_tool_calls") ?? true, ResponseFormat = responseFormat, HasToolMessages = hasToolMessages,
        };
    }

    private static bool IsTextFormat(JsonElement format) =>
        format.ValueKind == JsonValueKind.Object && format.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String && t.GetString() == "text";

    /// <summary>Prompts per completions request (× n choices each) are bounded so one request cannot fill the queue.</summary>
    public const int MaxPrompts = 64;

    public static CompletionRequest ParseCompletion(JsonElement body)
    {
        CheckFields(body, CompletionFields);
        var f = new Fields(body);
        var choice = ParseModel(f);
        var prompts = ParsePrompts(f);
        int maxTokens = f.OptionalInt("max_tokens") ?? 16; // the OpenAI / vLLM default for legacy completions
        bool echo = f.OptionalBool("echo") ?? false;
        var generation = ParseGeneration(f, maxTokens, "max_tokens");
        // legacy logprobs: an integer, the number of alternatives (OpenAI allows 0..5; vLLM up to 20)
        int? logprobs = f.OptionalInt("logprobs");
        if (logprobs is < 0 or > 20) throw ApiException.BadRequest($"'logprobs' must be in [0, 20], got {logprobs}.", "logprobs");
        if (logprobs is not null && echo)
            throw ApiException.BadRequest("'echo' with 'logprobs' is not supported (prompt logprobs are not computed).", "echo");
        if ((long)prompts.Count * generation.N > MaxChoices)
            throw ApiException.BadRequest($"{prompts.Count} prompts × n={generation.N} is more than {MaxChoices} choices in one request.", "n");
        return new CompletionRequest(choice.Name, prompts[0].Text, prompts[0].Ids, generation with { TopLogprobs = logprobs })
        {
            Choice = choice, Prompts = prompts, Echo = echo, ResponseFormat = f.Get("response_format"),
        };
    }

    /// <summary>Most choices (prompts × n) one request may ask for.</summary>
    public const int MaxChoices = 128;

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
        if (n is < 1 or > MaxChoices) throw ApiException.BadRequest($"'n' must be in [1, {MaxChoices}], got {n}.", "n");
        // best_of: the best of several by logprob is not done; equal to n it means n
        if (f.OptionalInt("best_of") is int bestOf && bestOf != n)
            throw ApiException.BadRequest($"'best_of' other than n is not supported (got best_of={bestOf}, n={n}).", "best_of");
        double minP = f.OptionalDouble("min_p") ?? 0;
        if (minP is < 0 or > 1) throw ApiException.BadRequest($"'min_p' must be in [0, 1], got {minP}.", "min_p");
        float presence = Penalty(f, "presence_penalty"), frequency = Penalty(f, "frequency_penalty");
        double repetition = f.OptionalDouble("repetition_penalty") ?? 1;
        if (repetition is <= 0 or > 100) throw ApiException.BadRequest($"'repetition_penalty' must be in (0, 100], got {repetition}.", "repetition_penalty");
        var bias = ParseLogitBias(f);
        var (stop, stopIds) = ParseStop(f);
        if (f.Get("stop_token_ids") is { } sti) stopIds = [.. stopIds, .. ParseIds(sti, "stop_token_ids")];
        if (stopIds.Count > 64) throw ApiException.BadRequest("At most 64 stop token ids.", "stop_token_ids");
        string? user = f.OptionalString("user") ?? f.OptionalString("safety_identifier");
        if (user is { Length: > 256 }) throw ApiException.BadRequest("'user' may be at most 256 characters.", "user");
        if (f.OptionalString("service_tier") is { } tier && tier is not ("auto" or "default"))
            throw ApiException.BadRequest($"'service_tier' '{tier}' is not supported (auto, default).", "service_tier");
        if (f.OptionalBool("store") == true) throw ApiException.BadRequest("'store' is not supported: completions are not stored.", "store");
        bool stream = f.OptionalBool("stream") ?? false;
        bool includeUsage = false;
        if (f.Get("stream_options") is { } so)
        {
            if (so.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest("'stream_options' must be an object.", "stream_options");
            includeUsage = new Fields(so, "stream_options.").OptionalBool("include_usage") ?? false;
        }
        bool ignoreEos = f.OptionalBool("ignore_eos") ?? false;
        return new GenerationFields(maxTokens, (float)temperature, (float)topP, seed, stop, stream, includeUsage, Math.Max(topK, 0), ignoreEos)
        {
            N = n, MinP = minP, PresencePenalty = presence, FrequencyPenalty = frequency, RepetitionPenalty = (float)repetition, LogitBias = bias,
            StopTokenIds = stopIds, User = user,
        };
    }

    private static float Penalty(Fields f, string name)
    {
        double v = f.OptionalDouble(name) ?? 0;
        if (v is < -2 or > 2) throw ApiException.BadRequest($"'{name}' must be in [-2, 2], got {v}.", name);
        return (float)v;
    }

    /// <summary>{"token id": bias in [-100, 100]}; ids are checked against the vocabulary when the job is made.</summary>
    private static Dictionary<int, float> ParseLogitBias(Fields f)
    {
        var result = new Dictionary<int, float>();
        if (f.Get("logit_bias") is not { } lb) return result;
        if (lb.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest("'logit_bias' must be an object of token id → bias.", "logit_bias");
        foreach (var p in lb.EnumerateObject())
        {
            if (result.Count >= 1024) throw ApiException.BadRequest("'logit_bias' may hold at most 1024 entries.", "logit_bias");
            if (!int.TryParse(p.Name, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int id))
                throw ApiException.BadRequest("'logit_bias' keys must be token ids (non-negative integers as strings).", "logit_bias");
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetDouble(out double b) || !double.IsFinite(b) || b is < -100 or > 100)
                throw ApiException.BadRequest($"'logit_bias' values must be numbers in [-100, 100] (token {id}).", "logit_bias");
            result[id] = (float)b;
        }
        return result;
    }

    /// <summary>A string, a list of strings, or a list of token ids (ending a choice like EOS).</summary>
    private static (IReadOnlyList<string> Strings, IReadOnlyList<int> Ids) ParseStop(Fields f)
    {
        const string Shape = "'stop' must be a string, a list of strings or a list of token ids.";
        switch (f.Get("stop"))
        {
            case null: return ([], []);
            case { ValueKind: JsonValueKind.String } s: return (StringOf(s, "stop") is { Length: > 0 } one ? [one] : [], []);
            case { ValueKind: JsonValueKind.Array } a:
                if (a.GetArrayLength() > 0 && a[0].ValueKind == JsonValueKind.Number) return ([], ParseIds(a, "stop"));
                var list = new List<string>();
                foreach (var item in a.EnumerateArray())
                {
                    if (item.ValueKind != JsonValueKind.String) throw ApiException.BadRequest(Shape, "stop");
                    if (StringOf(item, "stop") is { Length: > 0 } s) list.Add(s);
                }
                if (list.Count > 16) throw ApiException.BadRequest("'stop' may hold at most 16 strings.", "stop");
                return (list, []);
            default: throw ApiException.BadRequest(Shape, "stop");
        }
    }

    /// <summary>A string, a list of token ids, or a list of strings / token-id lists (several prompts).</summary>
    private static List<PromptInput> ParsePrompts(Fields f)
    {
        var p = f.Get("prompt") ?? throw ApiException.BadRequest("'prompt' is required.", "prompt");
        if (p.ValueKind == JsonValueKind.String) return [new(StringOf(p, "prompt"), null)];
        if (p.ValueKind != JsonValueKind.Array) throw ApiException.BadRequest("'prompt' must be a string or a list of token ids.", "prompt");
        int count = p.GetArrayLength();
        if (count > 0 && p[0].ValueKind is JsonValueKind.String or JsonValueKind.Array)
        {
            if (count > MaxPrompts) throw ApiException.BadRequest($"At most {MaxPrompts} prompts per request, got {count}.", "prompt");
            var list = new List<PromptInput>(count);
            foreach (var inner in p.EnumerateArray())
                list.Add(inner.ValueKind switch
                {
                    JsonValueKind.String => new(StringOf(inner, "prompt"), null),
                    JsonValueKind.Array => new(null, ParseIds(inner, "prompt")),
                    _ => throw ApiException.BadRequest("'prompt' lists must hold only strings or only token-id lists.", "prompt"),
                });
            return list;
        }
        return [new(null, ParseIds(p, "prompt"))];
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
