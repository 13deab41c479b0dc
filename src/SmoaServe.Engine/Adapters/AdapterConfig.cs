using System.Text.Json;
using SmoaServe.Engine.Adapters.Smoa;
using SmoaServe.Engine.Model;

namespace SmoaServe.Engine.Adapters;

public enum AdapterKind { Smoa, Lora }

/// <summary>
/// adapter_config.json of a PEFT LoRA or cpeft SMoA adapter, parsed from an untrusted file with every number bounded.
/// SMoA: scaling lora_alpha / r; LoRA: lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora.
/// </summary>
public sealed record AdapterConfig(
    AdapterKind Kind,
    int R,
    int NumBlocks,
    IReadOnlyList<int> BlockRanks,
    double LoraAlpha,
    bool UseRslora,
    IReadOnlyList<Projection> TargetModules)
{
    public const int MaxRank = 4096;
    public const int MaxBlocks = 1024;
    public const long MaxConfigBytes = 1 << 20;

    public double Scaling => Kind == AdapterKind.Lora && UseRslora ? LoraAlpha / Math.Sqrt(R) : LoraAlpha / R;

    public static AdapterConfig Smoa(int r, int numBlocks, double alpha, IReadOnlyList<Projection> targets, IReadOnlyList<int>? branchRanks = null)
        => new(AdapterKind.Smoa, r, numBlocks, branchRanks ?? SmoaMath.SplitRanks(r, numBlocks), alpha, false, targets);

    public static AdapterConfig Lora(int r, double alpha, IReadOnlyList<Projection> targets, bool useRslora = false)
        => new(AdapterKind.Lora, r, 1, [r], alpha, useRslora, targets);

    /// <summary>Parses config bytes read by the caller (e.g. with <see cref="Checkpoints.SafeFile"/>); invalid UTF-8 is an error.</summary>
    public static AdapterConfig Parse(byte[] utf8, string source)
    {
        string json;
        try { json = new System.Text.UTF8Encoding(false, throwOnInvalidBytes: true).GetString(utf8); }
        catch (System.Text.DecoderFallbackException) { throw new InvalidDataException($"{source}: not UTF-8 text"); }
        return Parse(json, source);
    }

    public static AdapterConfig Load(string path)
    {
        var info = new FileInfo(path);
        if (!info.Exists) throw new FileNotFoundException($"adapter config not found: {path}", path);
        if (info.Length > MaxConfigBytes) throw new InvalidDataException($"{path}: {info.Length} bytes, more than the {MaxConfigBytes} allowed for a config");
        return Parse(File.ReadAllText(path), path);
    }

    public static AdapterConfig Parse(string json, string source)
    {
        JsonElement root;
        try { root = JsonDocument.Parse(json, new JsonDocumentOptions { MaxDepth = 16 }).RootElement; }
        catch (JsonException e) { throw new InvalidDataException($"{source}: not valid JSON (line {e.LineNumber + 1}, byte {e.BytePositionInLine + 1})"); }
        if (root.ValueKind != JsonValueKind.Object) throw new InvalidDataException($"{source}: expected a JSON object");

        string peftType = String(root, "peft_type", source) ?? throw new InvalidDataException($"{source}: peft_type is missing");
        var kind = peftType.ToUpperInvariant() switch
        {
            "SMOA" => AdapterKind.Smoa,
            "LORA" => AdapterKind.Lora,
            _ => throw new InvalidDataException($"{source}: peft_type {Shown(peftType)} is not supported (SMOA or LORA)"),
        };
        int r = Int(root, "r", source) ?? throw new InvalidDataException($"{source}: r is missing");
        if (r < 1 || r > MaxRank) throw new InvalidDataException($"{source}: r = {r} must be between 1 and {MaxRank}");
        double alpha = Number(root, "lora_alpha", source) ?? 8;
        if (!double.IsFinite(alpha) || Math.Abs(alpha) > 1e6) throw new InvalidDataException($"{source}: lora_alpha = {alpha} is not a sensible finite number");
        var targets = Targets(root, source);

        RejectUnsupported(root, source, kind);
        if (kind == AdapterKind.Lora)
            return new(kind, r, 1, [r], alpha, Bool(root, "use_rslora", source) ?? false, targets);

        int k = Int(root, "num_blocks", source) ?? 2;
        if (k < 1 || k > MaxBlocks) throw new InvalidDataException($"{source}: num_blocks = {k} must be between 1 and {MaxBlocks}");
        int[] ranks = SmoaMath.SplitRanks(r, k);
        if (root.TryGetProperty("branch_ranks", out var br) && br.ValueKind != JsonValueKind.Null)
        {
            if (br.ValueKind != JsonValueKind.Array || br.GetArrayLength() != k)
                throw new InvalidDataException($"{source}: branch_ranks must be a list of num_blocks = {k} integers");
            ranks = br.EnumerateArray().Select(e => e.TryGetInt32(out int v) && v >= 0 && v <= MaxRank ? v
                : throw new InvalidDataException($"{source}: branch_ranks must hold integers in [0, {MaxRank}]")).ToArray();
            if (ranks.Sum() != r) throw new InvalidDataException($"{source}: branch_ranks [{string.Join(", ", ranks)}] must sum to r = {r}");
            // served blocks are padded to the largest rank: a lopsided split would cost K·max(r_k) instead of r on the device
            long padded = (long)k * ranks.Max();
            if (padded > Math.Max(4L * r, r + k))
                throw new InvalidDataException($"{source}: branch_ranks [{string.Join(", ", ranks)}] are too uneven to serve (num_blocks × largest rank = {padded} > {Math.Max(4L * r, r + k)})");
        }
        return new(kind, r, k, ranks, alpha, false, targets);
    }

    private static IReadOnlyList<Projection> Targets(JsonElement root, string source)
    {
        if (!root.TryGetProperty("target_modules", out var t) || t.ValueKind == JsonValueKind.Null)
            throw new InvalidDataException($"{source}: target_modules is missing");
        if (t.ValueKind == JsonValueKind.String) return TargetsFromPattern(t.GetString()!, source);
        if (t.ValueKind != JsonValueKind.Array) throw new InvalidDataException($"{source}: target_modules must be a list of module names or a regex string");
        var names = t.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.String ? e.GetString()!
            : throw new InvalidDataException($"{source}: target_modules must hold strings")).ToList();
        if (names.Count == 0 || names.Count > 64) throw new InvalidDataException($"{source}: target_modules must name 1 to 7 projections");
        var result = new List<Projection>();
        foreach (var name in names)
        {
            // PEFT matches list entries as suffixes of the module path ("self_attn.q_proj" or just "q_proj").
            string last = name[(name.LastIndexOf('.') + 1)..];
            if (!ProjectionNames.TryParse(last, out var p))
                throw new InvalidDataException($"{source}: target module {Shown(name)} is not a Llama projection (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)");
            if (!result.Contains(p)) result.Add(p);
        }
        return result;
    }

    /// <summary>PEFT's string form: "all-linear", or a regex that must fully match a module path like "model.layers.0.self_attn.q_proj".</summary>
    private static IReadOnlyList<Projection> TargetsFromPattern(string pattern, string source)
    {
        if (pattern == "all-linear") return Enum.GetValues<Projection>();
        if (pattern.Length > 1000) throw new InvalidDataException($"{source}: target_modules pattern is too long");
        System.Text.RegularExpressions.Regex regex;
        try { regex = new("^(?:" + pattern + ")$", System.Text.RegularExpressions.RegexOptions.CultureInvariant, TimeSpan.FromMilliseconds(200)); }
        catch (ArgumentException) { throw new InvalidDataException($"{source}: target_modules is not a valid regex"); }
        try
        {
            var result = Enum.GetValues<Projection>().Where(p =>
                regex.IsMatch("model.layers.0." + ProjectionNames.ModulePath(p)) || regex.IsMatch("base_model.model.model.layers.0." + ProjectionNames.ModulePath(p)) ||
                regex.IsMatch(ProjectionNames.ModuleName(p))).ToList();
            return result.Count > 0 ? result : throw new InvalidDataException($"{source}: target_modules {Shown(pattern)} matches none of the Llama projections");
        }
        catch (System.Text.RegularExpressions.RegexMatchTimeoutException) { throw new InvalidDataException($"{source}: target_modules takes too long to match"); }
    }

    private static void RejectUnsupported(JsonElement root, string source, AdapterKind kind)
    {
        if (Bool(root, "use_dora", source) == true) throw new InvalidDataException($"{source}: use_dora is not supported");
        if (Bool(root, "fan_in_fan_out", source) == true) throw new InvalidDataException($"{source}: fan_in_fan_out is not supported (Llama uses nn.Linear)");
        if (String(root, "bias", source) is { } bias && bias != "none") throw new InvalidDataException($"{source}: bias {Shown(bias)} is not supported (only 'none')");
        foreach (var key in new[] { "rank_pattern", "alpha_pattern" })
            if (root.TryGetProperty(key, out var pat) && pat.ValueKind == JsonValueKind.Object && pat.EnumerateObject().Any())
                throw new InvalidDataException($"{source}: {key} is not supported (one r and lora_alpha for all modules)");
        if (root.TryGetProperty("modules_to_save", out var mts) && mts.ValueKind == JsonValueKind.Array && mts.GetArrayLength() > 0)
            throw new InvalidDataException($"{source}: modules_to_save is not supported");
    }

    /// <summary>A value from the file as messages show it: quoted when it is a plain name of at most 40 letters, digits,
    /// '_', '-' or '.', else not at all (messages end up in logs: a config must not be a way to write into them).</summary>
    private static string Shown(string value) =>
        value.Length is > 0 and <= 40 && value.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '-' or '.') ? "'" + value + "'" : "(a value that is not a plain name)";

    private static string? String(JsonElement root, string name, string source) =>
        !root.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null ? null
        : v.ValueKind == JsonValueKind.String ? v.GetString() : throw new InvalidDataException($"{source}: {name} must be a string");

    private static int? Int(JsonElement root, string name, string source) =>
        !root.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null ? null
        : v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double d) && d == Math.Floor(d) && Math.Abs(d) < int.MaxValue ? (int)d
        : throw new InvalidDataException($"{source}: {name} must be an integer");

    private static double? Number(JsonElement root, string name, string source) =>
        !root.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null ? null
        : v.ValueKind == JsonValueKind.Number ? v.GetDouble() : throw new InvalidDataException($"{source}: {name} must be a number");

    private static bool? Bool(JsonElement root, string name, string source) =>
        !root.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null ? null
        : v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : throw new InvalidDataException($"{source}: {name} must be true or false");
}
