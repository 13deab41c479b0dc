using System.Text.Json;

namespace SmoaServe.Engine.Checkpoints;

/// <summary>RoPE settings: rope_type "default", "linear" or "llama3" (Hugging Face names).</summary>
public sealed record RopeConfig(
    string Type,
    double Theta,
    double Factor = 1.0,
    double LowFreqFactor = 1.0,
    double HighFreqFactor = 4.0,
    int OriginalMaxPositionEmbeddings = 8192);

/// <summary>
/// A Llama config.json (Hugging Face LlamaConfig). Reads both RoPE forms seen in the wild: top-level
/// <c>rope_theta</c> / <c>rope_scaling</c>, and the newer <c>rope_parameters</c>.
/// </summary>
public sealed record ModelConfig
{
    public required int HiddenSize { get; init; }
    public required int IntermediateSize { get; init; }
    public required int NumLayers { get; init; }
    public required int NumHeads { get; init; }
    public required int NumKvHeads { get; init; }
    public required int HeadDim { get; init; }
    public required int VocabSize { get; init; }
    public double RmsNormEps { get; init; } = 1e-6;
    public int MaxPositionEmbeddings { get; init; } = 2048;
    public bool TieWordEmbeddings { get; init; }
    public bool AttentionBias { get; init; }
    public bool MlpBias { get; init; }
    public required RopeConfig Rope { get; init; }
    public int? BosTokenId { get; init; }
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];
    public string ModelType { get; init; } = "llama";

    /// <summary>Query heads per KV head (GQA group size).</summary>
    public int KvGroups => NumHeads / NumKvHeads;

    public static ModelConfig Load(string dir)
    {
        string path = Path.Combine(dir, "config.json");
        if (!File.Exists(path)) throw new FileNotFoundException($"config.json not found in {dir}", path);
        return Parse(File.ReadAllText(path), path);
    }

    public static ModelConfig Parse(string json, string source = "config.json")
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(json); }
        catch (JsonException e) { throw new InvalidDataException($"{source}: not valid JSON: {e.Message}"); }
        using (doc)
        {
            var r = new JsonReader(doc.RootElement, source);
            CheckArchitecture(r, source);

            int hidden = r.RequiredInt("hidden_size");
            int heads = r.RequiredInt("num_attention_heads");
            int kvHeads = r.Int("num_key_value_heads") ?? heads;
            int headDim = r.Int("head_dim") ?? (heads > 0 ? hidden / heads : 0);
            var config = new ModelConfig
            {
                ModelType = r.String("model_type") ?? "llama",
                HiddenSize = hidden,
                IntermediateSize = r.RequiredInt("intermediate_size"),
                NumLayers = r.RequiredInt("num_hidden_layers"),
                NumHeads = heads,
                NumKvHeads = kvHeads,
                HeadDim = headDim,
                VocabSize = r.RequiredInt("vocab_size"),
                RmsNormEps = r.Double("rms_norm_eps") ?? 1e-6,
                MaxPositionEmbeddings = r.Int("max_position_embeddings") ?? 2048,
                TieWordEmbeddings = r.Bool("tie_word_embeddings") ?? false,
                AttentionBias = r.Bool("attention_bias") ?? false,
                MlpBias = r.Bool("mlp_bias") ?? false,
                Rope = ParseRope(r, source),
                BosTokenId = r.IntList("bos_token_id") is { Count: > 0 } bos ? bos[0] : null,
                EosTokenIds = r.IntList("eos_token_id"),
            };
            config.Validate(source);
            return config;
        }
    }

    private static void CheckArchitecture(JsonReader r, string source)
    {
        string? modelType = r.String("model_type");
        var architectures = r.StringList("architectures");
        if (modelType is not null && modelType != "llama")
            throw new NotSupportedException($"{source}: model_type '{modelType}' is not supported (only 'llama')");
        var unknown = architectures.Where(a => a != "LlamaForCausalLM").ToList();
        if (unknown.Count > 0)
            throw new NotSupportedException($"{source}: architecture '{unknown[0]}' is not supported (only 'LlamaForCausalLM')");
        if (modelType is null && architectures.Count == 0)
            throw new NotSupportedException($"{source}: neither model_type nor architectures says this is a Llama model");
        string? act = r.String("hidden_act");
        if (act is not null && act != "silu")
            throw new NotSupportedException($"{source}: hidden_act '{act}' is not supported (only 'silu')");
    }

    /// <summary>rope_parameters (new) or rope_theta + rope_scaling (old); rope_parameters wins when both are present.</summary>
    private static RopeConfig ParseRope(JsonReader r, string source)
    {
        JsonReader? p = r.Object("rope_parameters");
        // Per-attention-type form {"full_attention": {...}}: Llama only has full attention.
        if (p is not null && !p.Has("rope_type") && !p.Has("rope_theta") && p.Object("full_attention") is { } full) p = full;

        double theta = p?.Double("rope_theta") ?? r.Double("rope_theta") ?? 10000.0;
        JsonReader? s = p ?? r.Object("rope_scaling");
        string type = s?.String("rope_type") ?? s?.String("type") ?? "default";
        var rope = new RopeConfig(type, theta);
        string where = p is not null ? "rope_parameters" : "rope_scaling";
        switch (type)
        {
            case "default":
                return rope;
            case "linear":
                return rope with { Factor = s!.Double("factor") ?? throw new InvalidDataException($"{source}: {where}.factor is required for rope_type 'linear'") };
            case "llama3":
                return rope with
                {
                    Factor = s!.Double("factor") ?? throw new InvalidDataException($"{source}: {where}.factor is required for rope_type 'llama3'"),
                    LowFreqFactor = s.Double("low_freq_factor") ?? throw new InvalidDataException($"{source}: {where}.low_freq_factor is required for rope_type 'llama3'"),
                    HighFreqFactor = s.Double("high_freq_factor") ?? throw new InvalidDataException($"{source}: {where}.high_freq_factor is required for rope_type 'llama3'"),
                    OriginalMaxPositionEmbeddings = s.Int("original_max_position_embeddings")
                        ?? throw new InvalidDataException($"{source}: {where}.original_max_position_embeddings is required for rope_type 'llama3'"),
                };
            default:
                throw new NotSupportedException($"{source}: rope type '{type}' is not supported (default, linear, llama3)");
        }
    }

    private void Validate(string source)
    {
        void Positive(string key, long v) { if (v <= 0) throw new InvalidDataException($"{source}: {key} must be positive (got {v})"); }
        Positive("hidden_size", HiddenSize);
        Positive("intermediate_size", IntermediateSize);
        Positive("num_hidden_layers", NumLayers);
        Positive("num_attention_heads", NumHeads);
        Positive("num_key_value_heads", NumKvHeads);
        Positive("head_dim", HeadDim);
        Positive("vocab_size", VocabSize);
        // LlamaModel computes projection shapes such as num_attention_heads * head_dim in int: they must not wrap.
        if ((long)(NumHeads + 2L * NumKvHeads) * HeadDim > int.MaxValue)
            throw new InvalidDataException($"{source}: (num_attention_heads + 2 * num_key_value_heads) * head_dim = {(NumHeads + 2L * NumKvHeads) * HeadDim} is too large");
        if (HeadDim % 2 != 0) throw new InvalidDataException($"{source}: head_dim must be even for RoPE (got {HeadDim})");
        if (NumHeads % NumKvHeads != 0)
            throw new InvalidDataException($"{source}: num_attention_heads ({NumHeads}) is not a multiple of num_key_value_heads ({NumKvHeads})");
        if (RmsNormEps <= 0) throw new InvalidDataException($"{source}: rms_norm_eps must be positive");
        if (Rope.Theta <= 0) throw new InvalidDataException($"{source}: rope_theta must be positive");
        if (Rope.Factor <= 0) throw new InvalidDataException($"{source}: rope factor must be positive");
        if (Rope.Type == "llama3" && Rope.HighFreqFactor == Rope.LowFreqFactor)
            throw new InvalidDataException($"{source}: llama3 rope needs high_freq_factor != low_freq_factor");
        foreach (int id in EosTokenIds)
            if (id < 0) throw new InvalidDataException($"{source}: eos_token_id {id} is negative");
    }
}

/// <summary>generation_config.json: the EOS ids generation stops on (merged with config.json's).</summary>
public sealed record GenerationConfig(IReadOnlyList<int> EosTokenIds, int? BosTokenId)
{
    /// <summary>EOS ids of generation_config.json ∪ config.json (either file may list one id or several).</summary>
    public static GenerationConfig Load(string dir, ModelConfig model)
    {
        var eos = new List<int>();
        int? bos = model.BosTokenId;
        string path = Path.Combine(dir, "generation_config.json");
        if (File.Exists(path))
        {
            try
            {
                using var doc = JsonDocument.Parse(File.ReadAllText(path));
                var r = new JsonReader(doc.RootElement, path);
                eos.AddRange(r.IntList("eos_token_id"));
                if (r.IntList("bos_token_id") is { Count: > 0 } b) bos = b[0];
            }
            catch (JsonException e) { throw new InvalidDataException($"{path}: not valid JSON: {e.Message}"); }
        }
        foreach (int id in model.EosTokenIds) if (!eos.Contains(id)) eos.Add(id);
        return new GenerationConfig(eos, bos);
    }
}

/// <summary>Typed, null-tolerant access to a JSON object with errors that name the file and key.</summary>
internal sealed class JsonReader(JsonElement obj, string source)
{
    public bool Has(string key) => obj.ValueKind == JsonValueKind.Object && obj.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null;

    private JsonElement? Get(string key) =>
        obj.ValueKind == JsonValueKind.Object && obj.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    public int RequiredInt(string key) => Int(key) ?? throw new InvalidDataException($"{source}: '{key}' is required");

    public int? Int(string key) => Get(key) is { } v
        ? (v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i) ? i : throw Wrong(key, "an integer", v))
        : null;

    public double? Double(string key) => Get(key) is { } v
        ? (v.ValueKind == JsonValueKind.Number ? v.GetDouble() : throw Wrong(key, "a number", v))
        : null;

    public bool? Bool(string key) => Get(key) is { } v
        ? (v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : throw Wrong(key, "true or false", v))
        : null;

    public string? String(string key) => Get(key) is { } v
        ? (v.ValueKind == JsonValueKind.String ? v.GetString() : throw Wrong(key, "a string", v))
        : null;

    public JsonReader? Object(string key) => Get(key) is { } v
        ? (v.ValueKind == JsonValueKind.Object ? new JsonReader(v, source) : throw Wrong(key, "an object", v))
        : null;

    /// <summary>An int or a list of ints (eos_token_id style); empty when absent.</summary>
    public IReadOnlyList<int> IntList(string key)
    {
        if (Get(key) is not { } v) return [];
        if (v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int one)) return [one];
        if (v.ValueKind != JsonValueKind.Array) throw Wrong(key, "an integer or a list of integers", v);
        var list = new List<int>();
        foreach (var e in v.EnumerateArray())
            list.Add(e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int i) ? i : throw Wrong(key, "a list of integers", v));
        return list;
    }

    public IReadOnlyList<string> StringList(string key)
    {
        if (Get(key) is not { } v) return [];
        if (v.ValueKind != JsonValueKind.Array) throw Wrong(key, "a list of strings", v);
        return v.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.String ? e.GetString()! : throw Wrong(key, "a list of strings", v)).ToList();
    }

    private InvalidDataException Wrong(string key, string expected, JsonElement v)
    {
        string raw = v.GetRawText();
        if (raw.Length > 80) raw = raw[..80] + "...";
        return new InvalidDataException($"{source}: '{key}' should be {expected}, got {raw}");
    }
}
