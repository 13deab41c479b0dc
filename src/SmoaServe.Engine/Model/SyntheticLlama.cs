using SmoaServe.Engine.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Model;

/// <summary>
/// A Llama with random weights built in memory (deterministic for a seed), for speed measurements without a checkpoint:
/// `--synthetic hidden=768,layers=12,heads=12,kv_heads=4,ffn=2048,vocab=32000` (optional head_dim, theta, eps).
/// </summary>
public static class SyntheticLlama
{
    public const string SpecHelp = "hidden=H,layers=L,heads=NH,kv_heads=NKV,ffn=F,vocab=V[,head_dim=D][,theta=T]";

    public static ModelConfig ParseSpec(string spec)
    {
        var values = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        foreach (var part in spec.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            int eq = part.IndexOf('=');
            if (eq <= 0) throw new ArgumentException($"synthetic model spec: '{part}' is not key=value (expected {SpecHelp})");
            values[part[..eq].Trim()] = part[(eq + 1)..].Trim();
        }
        var known = new HashSet<string>(["hidden", "layers", "heads", "kv_heads", "ffn", "vocab", "head_dim", "theta", "eps"], StringComparer.OrdinalIgnoreCase);
        foreach (var k in values.Keys)
            if (!known.Contains(k)) throw new ArgumentException($"synthetic model spec: unknown key '{k}' (expected {SpecHelp})");

        int Int(string key, int? fallback = null)
        {
            if (!values.TryGetValue(key, out var s)) return fallback ?? throw new ArgumentException($"synthetic model spec: '{key}' is required ({SpecHelp})");
            return int.TryParse(s, out int v) && v > 0 ? v : throw new ArgumentException($"synthetic model spec: {key}={s} is not a positive integer");
        }
        double Double(string key, double fallback) =>
            !values.TryGetValue(key, out var s) ? fallback
            : double.TryParse(s, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double v) && v > 0 ? v
            : throw new ArgumentException($"synthetic model spec: {key}={s} is not a positive number");

        int hidden = Int("hidden"), heads = Int("heads");
        int kvHeads = Int("kv_heads", heads);
        int headDim = Int("head_dim", hidden / heads);
        if (heads % kvHeads != 0) throw new ArgumentException($"synthetic model spec: heads ({heads}) must be a multiple of kv_heads ({kvHeads})");
        if (headDim % 2 != 0 || headDim == 0) throw new ArgumentException($"synthetic model spec: head_dim ({headDim}) must be even and positive");
        return new ModelConfig
        {
            HiddenSize = hidden, IntermediateSize = Int("ffn"), NumLayers = Int("layers"), NumHeads = heads, NumKvHeads = kvHeads,
            HeadDim = headDim, VocabSize = Int("vocab"), RmsNormEps = Double("eps", 1e-5), MaxPositionEmbeddings = 131072,
            Rope = new RopeConfig("default", Double("theta", 500000.0)),
        };
    }

    /// <summary>
    /// Random weights: N(0, 0.02²) matrices, norm gains 1 + N(0, 0.1²), drawn in float32 on the target device (so an
    /// 8B-shaped model on a GPU does not need 32 GB of host RAM), then converted to the compute dtype. Deterministic for
    /// a seed on a given device type (CPU and CUDA draw different numbers).
    /// </summary>
    public static LlamaModel Create(ModelConfig config, ModelLoadOptions? options = null, ulong seed = 1234)
    {
        options ??= ModelLoadOptions.Cpu;
        var device = options.ResolvedDevice;
        var dtype = options.ResolvedDtype;
        // TorchSharp's Generator is a CPU generator; on CUDA seed the device's default generator instead.
        torch.Generator? generator = null;
        if (device.type == DeviceType.CUDA) torch.cuda.manual_seed((long)seed);
        else generator = new torch.Generator(seed);
        using var noGrad = torch.no_grad();
        return new LlamaModel(config, device, dtype, (name, shape) =>
        {
            using var scope = torch.NewDisposeScope();
            var w = torch.randn(shape, ScalarType.Float32, device, generator: generator);
            w = name.EndsWith("norm.weight", StringComparison.Ordinal) ? w.mul_(0.1).add_(1.0) : w.mul_(0.02);
            return w.to(dtype, device).MoveToOuterDisposeScope();
        }, options.Weights);
    }

    /// <summary>Parameter count of a Llama with this config (embeddings and lm_head counted separately unless tied).</summary>
    public static long ParameterCount(ModelConfig c)
    {
        long h = c.HiddenSize, d = c.HeadDim, f = c.IntermediateSize;
        long attention = h * c.NumHeads * d * 2 + h * c.NumKvHeads * d * 2;
        long mlp = 3 * h * f;
        long perLayer = attention + mlp + 2 * h;
        long embeddings = (long)c.VocabSize * h * (c.TieWordEmbeddings ? 1 : 2);
        return c.NumLayers * perLayer + embeddings + h;
    }

    /// <summary>Bytes of weights one decode step reads: every layer matrix, the final norm and lm_head (one embedding row, negligible).</summary>
    public static long WeightBytesReadPerToken(ModelConfig c, ScalarType dtype)
    {
        long elementSize = dtype switch { ScalarType.Float32 => 4, ScalarType.BFloat16 or ScalarType.Float16 => 2, _ => 4 };
        long h = c.HiddenSize;
        long perToken = ParameterCount(c) - (long)c.VocabSize * h * (c.TieWordEmbeddings ? 0 : 1); // minus the embedding table
        return perToken * elementSize;
    }
}
