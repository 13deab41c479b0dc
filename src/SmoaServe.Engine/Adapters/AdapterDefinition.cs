using System.Globalization;
using System.Text.RegularExpressions;
using SmoaServe.Engine.Adapters.Smoa;
using SmoaServe.Engine.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Adapters;

/// <summary>
/// One target module's factors. LoRA: A [r, in], B [out, r] (one "block"). SMoA: per block k, A_k [r_k, |C_k|] and
/// B_k [|R_k|, r_k] (null where r_k = 0), and the layout when the file carries it (else it comes from the base by SVD).
/// </summary>
public sealed class ModuleFactors(Tensor?[] a, Tensor?[] b, SmoaLayout? layout)
{
    public Tensor?[] A { get; } = a;
    public Tensor?[] B { get; } = b;
    public SmoaLayout? CarriedLayout { get; } = layout;
    public long ParameterCount => A.Concat(B).Sum(t => t?.NumberOfElements ?? 0);
}

/// <summary>
/// A fully validated adapter (config + float32 CPU factors per (layer, module)), not yet registered.
/// Built by <see cref="Validate"/> from an untrusted tensor set; nothing in here has touched the model.
/// </summary>
public sealed class AdapterDefinition : IDisposable
{
    public AdapterConfig Config { get; }
    public IReadOnlyDictionary<(int Layer, Projection Projection), ModuleFactors> Modules { get; }
    public long ParameterCount => Modules.Values.Sum(m => m.ParameterCount);

    public AdapterDefinition(AdapterConfig config, IReadOnlyDictionary<(int, Projection), ModuleFactors> modules)
    {
        Config = config;
        Modules = modules;
    }

    public void Dispose()
    {
        foreach (var m in Modules.Values)
            foreach (var t in m.A.Concat(m.B)) t?.Dispose();
    }

    private static readonly Regex KeyPattern = new(
        @"^base_model\.model\.model\.layers\.(?<layer>\d{1,6})\.(?<group>self_attn|mlp)\.(?<module>[a-z_]+)\." +
        @"(?:(?<factor>lora_A|lora_B)(?:\.(?<block>\d{1,6}))?\.weight|(?<layout>smoa_rows|smoa_cols)\.(?<lblock>\d{1,6}))$",
        RegexOptions.CultureInvariant);

    /// <summary>
    /// Checks every tensor of an adapter against the config and the base: key names, modules, layers, every shape,
    /// ranks, dtypes, finite values, layout indices (in range, a permutation, tensor_split sizes). Throws
    /// <see cref="InvalidDataException"/> naming the tensor on the first problem. The input tensors are not kept.
    /// </summary>
    /// <param name="source">file name used in messages</param>
    public static AdapterDefinition Validate(AdapterConfig config, IReadOnlyDictionary<string, Tensor> tensors, BaseModelView model, string source)
    {
        CheckTensorSpecs(config, tensors.ToDictionary(kv => kv.Key, kv => new TensorSpec(kv.Value.dtype, kv.Value.shape), StringComparer.Ordinal), model, source);
        var found = Group(config, tensors, model, source);
        var modules = new Dictionary<(int, Projection), ModuleFactors>();
        try
        {
            foreach (var ((layer, proj), parts) in found.OrderBy(e => e.Key))
            {
                string prefix = $"base_model.model.model.layers.{layer}.{ProjectionNames.ModulePath(proj)}.";
                var (outF, inF) = model.Shape(layer, proj);
                modules[(layer, proj)] = config.Kind == AdapterKind.Lora
                    ? LoraModule(config, parts, outF, inF, prefix, source)
                    : SmoaModule(config, parts, outF, inF, prefix, source);
            }
        }
        catch
        {
            foreach (var m in modules.Values) foreach (var t in m.A.Concat(m.B)) t?.Dispose();
            throw;
        }
        return new AdapterDefinition(config, modules);
    }

    /// <summary>
    /// Every check of <see cref="Validate"/> that needs only names, dtypes and shapes (a safetensors header): which tensors
    /// exist, that each is one this adapter and this base expect, and its exact shape. Run before any data is read, so a
    /// file holding an unknown or mis-shaped tensor is refused without reading it.
    /// </summary>
    public static void CheckTensorSpecs(AdapterConfig config, IReadOnlyDictionary<string, TensorSpec> tensors, BaseModelView model, string source)
    {
        var found = Group(config, tensors, model, source);
        foreach (var ((layer, proj), parts) in found.OrderBy(e => e.Key))
        {
            string prefix = $"base_model.model.model.layers.{layer}.{ProjectionNames.ModulePath(proj)}.";
            var (outF, inF) = model.Shape(layer, proj);
            if (config.Kind == AdapterKind.Lora)
            {
                foreach (var part in parts.Keys)
                    if (part is not ("lora_A" or "lora_B")) throw new InvalidDataException($"{source}: tensor '{prefix}{Key(part)}' is not part of a LoRA adapter");
                SpecFactor(parts, "lora_A", [config.R, inF], prefix, source);
                SpecFactor(parts, "lora_B", [outF, config.R], prefix, source);
                continue;
            }
            int k = config.NumBlocks;
            SmoaLayout.CheckBlockCount(outF, inF, k, $"{source}: {prefix.TrimEnd('.')}");
            var rowSizes = SmoaLayout.SplitSizes(outF, k);
            var colSizes = SmoaLayout.SplitSizes(inF, k);
            CheckSmoaPartNames(config, parts.Keys, prefix, source);
            for (int blk = 0; blk < k; blk++)
            {
                int rk = config.BlockRanks[blk];
                if (rk == 0) continue;
                SpecFactor(parts, $"lora_A.{blk}", [rk, colSizes[blk]], prefix, source);
                SpecFactor(parts, $"lora_B.{blk}", [rowSizes[blk], rk], prefix, source);
            }
            int layoutParts = parts.Keys.Count(p => p.StartsWith("smoa_", StringComparison.Ordinal));
            if (layoutParts == 0) continue;
            for (int blk = 0; blk < k; blk++)
            {
                SpecIndices(parts, $"smoa_rows.{blk}", rowSizes[blk], prefix, source);
                SpecIndices(parts, $"smoa_cols.{blk}", colSizes[blk], prefix, source);
            }
        }
    }

    /// <summary>The header check over a safetensors file's tensor table.</summary>
    public static void CheckTensorSpecs(AdapterConfig config, IReadOnlyDictionary<string, Checkpoints.SafeTensorInfo> tensors, BaseModelView model, string source) =>
        CheckTensorSpecs(config, tensors.ToDictionary(kv => kv.Key, kv => new TensorSpec(kv.Value.ScalarType, kv.Value.Shape), StringComparer.Ordinal), model, source);

    private static void SpecFactor(Dictionary<string, TensorSpec> parts, string part, long[] shape, string prefix, string source)
    {
        string name = prefix + Key(part);
        if (!parts.TryGetValue(part, out var t)) throw new InvalidDataException($"{source}: tensor '{name}' is missing");
        if (t.DType is not (ScalarType.Float32 or ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Float64))
            throw new InvalidDataException($"{source}: tensor '{name}' has dtype {t.DType}, expected a float type");
        if (!t.Shape.SequenceEqual(shape))
            throw new InvalidDataException($"{source}: tensor '{name}' has shape [{string.Join(", ", t.Shape)}], expected [{string.Join(", ", shape)}] for this base model and config");
    }

    private static void SpecIndices(Dictionary<string, TensorSpec> parts, string part, int count, string prefix, string source)
    {
        string name = prefix + part;
        if (!parts.TryGetValue(part, out var t))
            throw new InvalidDataException($"{source}: layout tensor '{name}' is missing (a stored layout needs smoa_rows.k and smoa_cols.k for every block)");
        if (t.DType is not (ScalarType.Int64 or ScalarType.Int32)) throw new InvalidDataException($"{source}: tensor '{name}' has dtype {t.DType}, expected int64");
        if (t.Shape.Length != 1 || t.Shape[0] != count)
            throw new InvalidDataException($"{source}: tensor '{name}' has shape [{string.Join(", ", t.Shape)}], expected [{count}] (tensor_split sizes)");
    }

    private static void CheckSmoaPartNames(AdapterConfig config, IEnumerable<string> parts, string prefix, string source)
    {
        int k = config.NumBlocks;
        foreach (var part in parts)
        {
            var bits = part.Split('.');
            if (bits.Length != 2 || !int.TryParse(bits[1], NumberStyles.None, CultureInfo.InvariantCulture, out int block) || block >= k)
                throw new InvalidDataException($"{source}: tensor '{prefix}{Key(part)}' does not name a block 0..{k - 1} of this SMoA adapter");
            if (bits[0] is "lora_A" or "lora_B" && config.BlockRanks[block] == 0)
                throw new InvalidDataException($"{source}: tensor '{prefix}{Key(part)}': block {block} has rank 0 and must have no factors");
        }
    }

    /// <summary>Tensors by (layer, module) and part ("lora_A", "lora_B.1", "smoa_rows.0"), every key checked against the
    /// config and the base; every target module must have tensors.</summary>
    private static Dictionary<(int, Projection), Dictionary<string, T>> Group<T>(AdapterConfig config, IReadOnlyDictionary<string, T> tensors, BaseModelView model, string source)
    {
        var found = new Dictionary<(int, Projection), Dictionary<string, T>>();
        foreach (var (key, value) in tensors)
        {
            var m = KeyPattern.Match(key);
            if (!m.Success) throw new InvalidDataException($"{source}: tensor '{Checkpoints.SafeTensorsFile.Printable(key.Length > 200 ? key[..200] + "…" : key)}' is not an adapter weight this server understands (expected base_model.model.model.layers.L.<module>.lora_A/lora_B...)");
            int layer = int.Parse(m.Groups["layer"].Value, CultureInfo.InvariantCulture);
            if (layer >= model.LayerCount) throw new InvalidDataException($"{source}: tensor '{key}': layer {layer} does not exist (the base has {model.LayerCount} layers)");
            if (!ProjectionNames.TryParse(m.Groups["module"].Value, out var proj) || ProjectionNames.ModulePath(proj) != m.Groups["group"].Value + "." + m.Groups["module"].Value)
                throw new InvalidDataException($"{source}: tensor '{key}': unknown module '{m.Groups["group"].Value}.{m.Groups["module"].Value}'");
            if (!config.TargetModules.Contains(proj)) throw new InvalidDataException($"{source}: tensor '{key}': module {ProjectionNames.ModuleName(proj)} is not in target_modules");
            string part = m.Groups["factor"].Success
                ? m.Groups["factor"].Value + (m.Groups["block"].Success ? "." + m.Groups["block"].Value : "")
                : m.Groups["layout"].Value + "." + m.Groups["lblock"].Value;
            if (!found.TryGetValue((layer, proj), out var parts)) found[(layer, proj)] = parts = new();
            parts[part] = value;
        }
        foreach (var target in config.TargetModules)
            if (!found.Keys.Any(k => k.Item2 == target))
                throw new InvalidDataException($"{source}: target module {ProjectionNames.ModuleName(target)} has no tensors");
        return found;
    }

    private static ModuleFactors LoraModule(AdapterConfig config, Dictionary<string, Tensor> parts, int outF, int inF, string prefix, string source)
    {
        foreach (var part in parts.Keys)
            if (part is not ("lora_A" or "lora_B")) throw new InvalidDataException($"{source}: tensor '{prefix}{Key(part)}' is not part of a LoRA adapter");
        var a = Factor(parts, "lora_A", [config.R, inF], prefix, source);    // [r, in]
        var b = Factor(parts, "lora_B", [outF, config.R], prefix, source);   // [out, r]
        return new ModuleFactors([a], [b], null);
    }

    private static ModuleFactors SmoaModule(AdapterConfig config, Dictionary<string, Tensor> parts, int outF, int inF, string prefix, string source)
    {
        int k = config.NumBlocks;
        SmoaLayout.CheckBlockCount(outF, inF, k, $"{source}: {prefix.TrimEnd('.')}");
        var rowSizes = SmoaLayout.SplitSizes(outF, k);
        var colSizes = SmoaLayout.SplitSizes(inF, k);
        foreach (var part in parts.Keys)
        {
            var bits = part.Split('.');
            if (bits.Length != 2 || !int.TryParse(bits[1], NumberStyles.None, CultureInfo.InvariantCulture, out int block) || block >= k)
                throw new InvalidDataException($"{source}: tensor '{prefix}{Key(part)}' does not name a block 0..{k - 1} of this SMoA adapter");
            if (bits[0] is "lora_A" or "lora_B" && config.BlockRanks[block] == 0)
                throw new InvalidDataException($"{source}: tensor '{prefix}{Key(part)}': block {block} has rank 0 and must have no factors");
        }
        var a = new Tensor?[k];
        var b = new Tensor?[k];
        try
        {
            for (int blk = 0; blk < k; blk++)
            {
                int rk = config.BlockRanks[blk];
                if (rk == 0) continue;
                a[blk] = Factor(parts, $"lora_A.{blk}", [rk, colSizes[blk]], prefix, source);   // [r_k, |C_k|]
                b[blk] = Factor(parts, $"lora_B.{blk}", [rowSizes[blk], rk], prefix, source);   // [|R_k|, r_k]
            }
            return new ModuleFactors(a, b, CarriedLayout(parts, k, outF, inF, prefix, source));
        }
        catch
        {
            foreach (var t in a.Concat(b)) t?.Dispose();
            throw;
        }
    }

    /// <summary>The smoa_rows.k / smoa_cols.k tensors if the file has them: all 2K or none.</summary>
    private static SmoaLayout? CarriedLayout(Dictionary<string, Tensor> parts, int k, int outF, int inF, string prefix, string source)
    {
        int present = Enumerable.Range(0, k).Sum(blk => (parts.ContainsKey($"smoa_rows.{blk}") ? 1 : 0) + (parts.ContainsKey($"smoa_cols.{blk}") ? 1 : 0));
        if (present == 0) return null;
        if (present != 2 * k)
        {
            string missing = Enumerable.Range(0, k).SelectMany(blk => new[] { $"smoa_rows.{blk}", $"smoa_cols.{blk}" }).First(p => !parts.ContainsKey(p));
            throw new InvalidDataException($"{source}: layout tensor '{prefix}{missing}' is missing (a stored layout needs smoa_rows.k and smoa_cols.k for every block)");
        }
        var rows = new long[k][];
        var cols = new long[k][];
        for (int blk = 0; blk < k; blk++)
        {
            rows[blk] = Indices(parts[$"smoa_rows.{blk}"], $"{prefix}smoa_rows.{blk}", outF, source);
            cols[blk] = Indices(parts[$"smoa_cols.{blk}"], $"{prefix}smoa_cols.{blk}", inF, source);
        }
        return SmoaLayout.FromIndices(outF, inF, rows, cols, $"{source}: {prefix.TrimEnd('.')}");
    }

    private static long[] Indices(Tensor t, string name, int limit, string source)
    {
        if (t.dtype is not (ScalarType.Int64 or ScalarType.Int32)) throw new InvalidDataException($"{source}: tensor '{name}' has dtype {t.dtype}, expected int64");
        if (t.dim() != 1 || t.shape[0] > limit) throw new InvalidDataException($"{source}: tensor '{name}' has shape [{string.Join(", ", t.shape)}], expected a 1-D list of at most {limit} indices");
        using var l = t.to(ScalarType.Int64).cpu();
        return l.data<long>().ToArray();
    }

    /// <summary>A factor with exactly the expected shape, a float dtype and finite values, as a float32 CPU copy.</summary>
    private static Tensor Factor(Dictionary<string, Tensor> parts, string part, long[] shape, string prefix, string source)
    {
        string name = prefix + Key(part);
        if (!parts.TryGetValue(part, out var t)) throw new InvalidDataException($"{source}: tensor '{name}' is missing");
        if (t.dtype is not (ScalarType.Float32 or ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Float64))
            throw new InvalidDataException($"{source}: tensor '{name}' has dtype {t.dtype}, expected a float type");
        if (!t.shape.SequenceEqual(shape))
            throw new InvalidDataException($"{source}: tensor '{name}' has shape [{string.Join(", ", t.shape)}], expected [{string.Join(", ", shape)}] for this base model and config");
        using var scope = NewDisposeScope();
        var f = t.to(ScalarType.Float32, copy: true).cpu();
        if (!f.isfinite().all().item<bool>()) throw new InvalidDataException($"{source}: tensor '{name}' holds NaN or infinite values");
        return f.MoveToOuterDisposeScope();
    }

    /// <summary>Dtype and shape of a tensor, without its values.</summary>
    public sealed record TensorSpec(ScalarType DType, long[] Shape);

    private static string Key(string part) => part.StartsWith("smoa_", StringComparison.Ordinal) ? part : part + ".weight";
}
