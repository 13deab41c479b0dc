using System.Text.Json;

namespace SmoaServe.Text.Tokenizers;

/// <summary>The parts of tokenizer_config.json the tokenizer and chat template use.</summary>
internal sealed class TokenizerConfig
{
    public string? BosToken { get; init; }
    public string? EosToken { get; init; }
    public string? UnkToken { get; init; }
    public string? PadToken { get; init; }
    public bool? AddBosToken { get; init; }
    public bool? AddEosToken { get; init; }
    public JsonElement? ChatTemplate { get; init; }
    /// <summary>"added_tokens_decoder": tokens a slow (tokenizer.model) tokenizer adds on top of the SentencePiece pieces.</summary>
    public List<AddedToken> AddedTokens { get; init; } = new();

    public static TokenizerConfig Load(string modelDir)
    {
        var path = Path.Combine(modelDir, "tokenizer_config.json");
        if (!File.Exists(path)) return new TokenizerConfig();
        JsonElement root;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path), new JsonDocumentOptions { AllowTrailingCommas = true });
            root = doc.RootElement.Clone();
        }
        catch (JsonException e) { throw new TokenizerFormatException($"{path}: not valid JSON ({e.Message})", e); }
        if (root.ValueKind != JsonValueKind.Object) throw new TokenizerFormatException($"{path}: expected a JSON object");
        return new TokenizerConfig
        {
            BosToken = TokenString(root, "bos_token", path),
            EosToken = TokenString(root, "eos_token", path),
            UnkToken = TokenString(root, "unk_token", path),
            PadToken = TokenString(root, "pad_token", path),
            AddBosToken = OptionalBool(root, "add_bos_token", path),
            AddEosToken = OptionalBool(root, "add_eos_token", path),
            ChatTemplate = root.TryGetProperty("chat_template", out var t) && t.ValueKind != JsonValueKind.Null ? t : null,
            AddedTokens = ReadAddedTokensDecoder(root, path),
        };
    }

    /// <summary>A special token given as a string or as {"content": ...}; null when absent or null.</summary>
    static string? TokenString(JsonElement root, string key, string path)
    {
        if (!root.TryGetProperty(key, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind == JsonValueKind.String) return v.GetString();
        if (v.ValueKind == JsonValueKind.Object && v.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String)
            return c.GetString();
        throw new TokenizerFormatException($"{path}: '{key}' must be a string or an object with a string 'content'");
    }

    static List<AddedToken> ReadAddedTokensDecoder(JsonElement root, string path)
    {
        var list = new List<AddedToken>();
        if (!root.TryGetProperty("added_tokens_decoder", out var d) || d.ValueKind != JsonValueKind.Object) return list;
        foreach (var p in d.EnumerateObject())
        {
            if (!int.TryParse(p.Name, out var id) || id < 0 || id > 10_000_000)
                throw new TokenizerFormatException($"{path}: added_tokens_decoder key '{p.Name}' is not a token id");
            var content = HfPipeline.Str(p.Value, "content", path, $"added_tokens_decoder[{p.Name}]");
            if (content.Length == 0) continue;
            list.Add(new AddedToken(id, content, HfPipeline.Bool(p.Value, "special", false), HfPipeline.Bool(p.Value, "lstrip", false),
                HfPipeline.Bool(p.Value, "rstrip", false), HfPipeline.Bool(p.Value, "single_word", false)));
        }
        return list;
    }

    static bool? OptionalBool(JsonElement root, string key, string path)
    {
        if (!root.TryGetProperty(key, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw new TokenizerFormatException($"{path}: '{key}' must be true or false"),
        };
    }
}
