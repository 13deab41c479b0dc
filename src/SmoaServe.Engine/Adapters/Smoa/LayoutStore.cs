using System.Collections.Concurrent;
using SmoaServe.Engine.Checkpoints;
using SmoaServe.Engine.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Adapters.Smoa;

/// <summary>
/// SMoA layouts of one base model, computed lazily (one SVD per (layer, module, K) that some adapter targets), kept in
/// memory and, when a data directory is given, cached on disk as
/// <c>&lt;data&gt;/layouts/&lt;base fingerprint&gt;/layers.{L}.{module}.k{K}.safetensors</c> (int64 rows.k / cols.k),
/// so a restart or a second process skips the SVDs. Files read back are validated like an adapter's stored layout.
/// </summary>
public sealed class LayoutStore(BaseModelView model, string? dataDirectory = null)
{
    private readonly ConcurrentDictionary<(int Layer, Projection Projection, int K), SmoaLayout> _memory = new();
    private int _svdCount, _diskHits;

    /// <summary>How many SVDs this store has run (tests use it to see the disk cache work).</summary>
    public int SvdCount => _svdCount;
    /// <summary>How many layouts came from the disk cache.</summary>
    public int DiskHits => _diskHits;

    /// <summary>The folder of this base's cached layouts, or null when there is no data directory.</summary>
    public string? CacheDirectory => dataDirectory is null ? null : Path.Combine(dataDirectory, "layouts", model.Fingerprint);

    /// <summary>The layout of W(layer, projection) for K blocks: memory, else disk, else SVD (then saved).</summary>
    public SmoaLayout Get(int layer, Projection projection, int k) =>
        _memory.GetOrAdd((layer, projection, k), key => LoadFromDisk(key) ?? ComputeAndSave(key));

    /// <summary>
    /// Installs a layout for (layer, projection, K) without an SVD. For synthetic benchmarks only: on random weights
    /// the spectral order means nothing and only the block sizes matter for speed.
    /// </summary>
    public void Preset(int layer, Projection projection, SmoaLayout layout) => _memory[(layer, projection, layout.K)] = layout;

    private SmoaLayout ComputeAndSave((int Layer, Projection Projection, int K) key)
    {
        Interlocked.Increment(ref _svdCount);
        using var scope = NewDisposeScope();
        var layout = SmoaLayout.Compute(model.LayoutWeight(key.Layer, key.Projection), key.K);
        if (CachePath(key) is { } path)
        {
            try { Save(path, layout); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { /* the cache is an optimisation only */ }
        }
        return layout;
    }

    private SmoaLayout? LoadFromDisk((int Layer, Projection Projection, int K) key)
    {
        if (CachePath(key) is not { } path || !File.Exists(path)) return null;
        var (m, n) = model.Shape(key.Layer, key.Projection);
        try
        {
            using var file = SafeTensorsFile.Open(path);
            var rows = new long[key.K][];
            var cols = new long[key.K][];
            for (int k = 0; k < key.K; k++)
            {
                rows[k] = ReadIndices(file, $"rows.{k}", m);
                cols[k] = ReadIndices(file, $"cols.{k}", n);
            }
            var layout = SmoaLayout.FromIndices(m, n, rows, cols, path);
            Interlocked.Increment(ref _diskHits);
            return layout;
        }
        catch (Exception e) when (e is InvalidDataException or IOException or KeyNotFoundException)
        {
            return null;   // a damaged cache file is recomputed (and overwritten)
        }
    }

    private static long[] ReadIndices(SafeTensorsFile file, string name, int limit)
    {
        var info = file.Info(name);
        if (info.DType != "I64" || info.Shape.Length != 1 || info.Shape[0] > limit) throw new InvalidDataException($"{file.Path}: '{name}' is not an int64 index list");
        using var t = file.ReadTensor(name);
        return t.data<long>().ToArray();
    }

    private static void Save(string path, SmoaLayout layout)
    {
        using var scope = NewDisposeScope();
        var tensors = new List<(string, Tensor)>();
        for (int k = 0; k < layout.K; k++)
        {
            tensors.Add(($"rows.{k}", tensor(layout.Rows[k])));
            tensors.Add(($"cols.{k}", tensor(layout.Cols[k])));
        }
        SafeTensorsWriter.Write(path, tensors, new Dictionary<string, string> { ["format"] = "smoa-layout", ["hash"] = layout.Hash });
    }

    private string? CachePath((int Layer, Projection Projection, int K) key) => CacheDirectory is { } dir
        ? Path.Combine(dir, $"layers.{key.Layer}.{ProjectionNames.ModuleName(key.Projection)}.k{key.K}.safetensors")
        : null;
}
