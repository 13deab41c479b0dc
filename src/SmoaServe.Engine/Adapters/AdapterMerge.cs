using SmoaServe.Engine.Adapters.Smoa;
using SmoaServe.Engine.Checkpoints;
using SmoaServe.Engine.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Adapters;

/// <summary>
/// Merging an adapter into base weights (PEFT merge_and_unload): W' = W + ΔW with ΔW formed densely. Only for
/// `smoa merge` and the naive swap baseline of `smoa bench`; serving never forms ΔW.
/// </summary>
public static class AdapterMerge
{
    /// <summary>Dense ΔW [out, in] (float32, on the weight's device) of one module of an adapter.</summary>
    /// <param name="weight">W [out, in] of that module</param>
    /// <param name="layouts">where an SMoA adapter without a stored layout gets it</param>
    public static Tensor DeltaWeight(AdapterDefinition adapter, int layer, Projection projection, Tensor weight, LayoutStore layouts)
    {
        var f = adapter.Modules[(layer, projection)];
        var c = adapter.Config;
        using var scope = NewDisposeScope();
        Tensor delta;
        if (c.Kind == AdapterKind.Lora)
            delta = f.B[0]!.to(weight.device).matmul(f.A[0]!.to(weight.device)) * c.Scaling;        // scale · B A  [out, in]
        else
        {
            var layout = f.CarriedLayout ?? layouts.Get(layer, projection, c.NumBlocks);
            delta = SmoaMath.DenseDelta(weight, layout,
                f.A.Select(t => t?.to(weight.device)).ToArray(), f.B.Select(t => t?.to(weight.device)).ToArray(), c.Scaling);
        }
        return delta.MoveToOuterDisposeScope();
    }

    /// <summary>W += ΔW in place for every module of the adapter (returns the dense ΔW's so <see cref="Unmerge"/> can undo it).</summary>
    public static List<(Tensor Weight, Tensor Delta)> MergeInPlace(AdapterDefinition adapter, Func<int, Projection, Tensor> weightOf, LayoutStore layouts)
    {
        using var _ = no_grad();
        var merged = new List<(Tensor, Tensor)>();
        foreach (var (layer, proj) in adapter.Modules.Keys)
        {
            var w = weightOf(layer, proj);
            var delta = DeltaWeight(adapter, layer, proj, w, layouts).to(w.dtype);
            w.add_(delta);
            merged.Add((w, delta));
        }
        return merged;
    }

    /// <summary>W -= ΔW for what <see cref="MergeInPlace"/> added, and frees the ΔW's.</summary>
    public static void Unmerge(List<(Tensor Weight, Tensor Delta)> merged)
    {
        using var _ = no_grad();
        foreach (var (w, d) in merged) { w.sub_(d); d.Dispose(); }
    }

    /// <summary>
    /// Writes <paramref name="outDir"/>: a copy of the checkpoint in <paramref name="modelDir"/> whose target weights are
    /// W + ΔW in the checkpoint's own dtype (same file names, shards and index), plus its config, tokenizer and other
    /// top-level files. Returns the number of merged weight tensors.
    /// </summary>
    /// <param name="dataDirectory">optional layout cache (see <see cref="LayoutStore"/>)</param>
    public static int MergeCheckpoint(string modelDir, string adapterDir, string outDir, string? dataDirectory = null, TextWriter? log = null)
    {
        if (Path.GetFullPath(modelDir).TrimEnd('/') == Path.GetFullPath(outDir).TrimEnd('/'))
            throw new ArgumentException("--out must differ from --model (the merge never overwrites the base checkpoint)");
        var config = ModelConfig.Load(modelDir);
        using var files = CheckpointFiles.Open(modelDir);
        var view = BaseModelView.From(files, config);
        using var adapter = AdapterFiles.Read(adapterDir, view);
        var layouts = new LayoutStore(view, dataDirectory);

        var targets = adapter.Modules.Keys.ToDictionary(k => $"model.layers.{k.Layer}.{ProjectionNames.ModulePath(k.Projection)}.weight");
        var weightFiles = files.Names.GroupBy(n => files.FileOf(n).Path).ToList();
        Directory.CreateDirectory(outDir);
        int merged = 0;
        using var _ = no_grad();
        foreach (var group in weightFiles)
        {
            var file = files.FileOf(group.First());
            using var scope = NewDisposeScope();
            var tensors = new List<(string, Tensor)>();
            foreach (var name in file.Names)
            {
                var raw = file.ReadTensor(name);
                if (targets.TryGetValue(name, out var key))
                {
                    var w = raw.to(ScalarType.Float32);
                    var delta = DeltaWeight(adapter, key.Layer, key.Projection, w, layouts);
                    raw = (w + delta).to(raw.dtype);
                    merged++;
                }
                tensors.Add((name, raw));
            }
            var metadata = file.Metadata.Count > 0 ? file.Metadata : new Dictionary<string, string> { ["format"] = "pt" };
            SafeTensorsWriter.Write(Path.Combine(outDir, Path.GetFileName(file.Path)), tensors, metadata);
            log?.WriteLine($"wrote {Path.Combine(outDir, Path.GetFileName(file.Path))} ({tensors.Count} tensors)");
        }
        if (merged != targets.Count) throw new InvalidDataException($"{modelDir}: {targets.Count - merged} adapted weights were not found in the checkpoint");

        var weightNames = weightFiles.Select(g => Path.GetFileName(g.Key)).ToHashSet();
        foreach (var path in Directory.EnumerateFiles(modelDir))
        {
            string name = Path.GetFileName(path);
            if (weightNames.Contains(name) || name.EndsWith(".safetensors", StringComparison.Ordinal) || name.StartsWith('.')) continue;
            File.Copy(path, Path.Combine(outDir, name), overwrite: true);
        }
        return merged;
    }
}
