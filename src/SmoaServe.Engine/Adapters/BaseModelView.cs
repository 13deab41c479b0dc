using System.Security.Cryptography;
using SmoaServe.Engine.Checkpoints;
using SmoaServe.Engine.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Adapters;

/// <summary>
/// What the adapter code needs from the frozen base: its projection weights W [out, in] per (layer, module) as the model
/// computes with them (anchors, merging), the same weights at full checkpoint precision (SMoA layouts: an SVD of
/// bf16-rounded weights can order rows differently from the reference), and a fingerprint of the weights (the key of the
/// on-disk layout cache).
/// </summary>
public sealed class BaseModelView
{
    private readonly Func<int, Projection, Tensor> _weight;
    private readonly Func<int, Projection, Tensor> _layoutWeight;
    private readonly Func<int, ProjectionGroup, Tensor>? _groupWeight;
    private readonly Func<int, Projection, (int Out, int In)>? _shape;
    private readonly Func<string>? _fingerprintSource;
    private string? _fingerprint;
    private readonly System.Collections.Concurrent.ConcurrentDictionary<(int, Projection), double> _norms = new();

    /// <param name="weight">(layer, projection) → W [out, in] as the model computes with it (owned by the model, or created
    /// in the caller's dispose scope)</param>
    /// <param name="identity">architecture text folded into the fingerprint</param>
    /// <param name="shape">(layer, projection) → (out, in) without materialising the weight (optional)</param>
    /// <param name="layoutWeight">W at checkpoint precision for the SVD (default: <paramref name="weight"/>)</param>
    /// <param name="fingerprint">computes the fingerprint (default: sampled values of <paramref name="layoutWeight"/>)</param>
    public BaseModelView(int layerCount, Func<int, Projection, Tensor> weight, string? identity = null,
        Func<int, Projection, (int Out, int In)>? shape = null, ScalarType? dtype = null, Device? device = null,
        Func<int, Projection, Tensor>? layoutWeight = null, Func<string>? fingerprint = null,
        Func<int, ProjectionGroup, Tensor>? groupWeight = null)
    {
        if (layerCount < 1) throw new ArgumentOutOfRangeException(nameof(layerCount));
        LayerCount = layerCount;
        _weight = weight;
        _groupWeight = groupWeight;
        _layoutWeight = layoutWeight ?? weight;
        _shape = shape;
        _fingerprintSource = fingerprint;
        Identity = identity ?? "";
        if (dtype is null || device is null)
        {
            using var scope = NewDisposeScope();
            var w0 = weight(0, Projection.Q);
            dtype ??= w0.dtype;
            device ??= w0.device;
        }
        DType = dtype.Value;
        Device = device;
    }

    /// <summary>
    /// The view of a loaded model: it computes with its own weights; layouts and the fingerprint come from its checkpoint
    /// files when it has a directory (so a bf16 model gets the layout of its float32 checkpoint), else from its weights.
    /// </summary>
    public static BaseModelView From(LlamaModel model)
    {
        string identity = IdentityOf(model.Config);
        if (model.Directory is not { } dir)
            return new BaseModelView(model.Config.NumLayers, model.ProjectionWeight, identity, groupWeight: model.GroupWeight);
        return new BaseModelView(model.Config.NumLayers, model.ProjectionWeight, identity, groupWeight: model.GroupWeight,
            layoutWeight: (l, p) => { using var files = CheckpointFiles.Open(dir); return files.Read(WeightName(l, p), ScalarType.Float32); },
            fingerprint: () => { using var files = CheckpointFiles.Open(dir); return CheckpointFingerprint(files, model.Config); });
    }

    /// <summary>
    /// The view of a checkpoint on disk (for merging): each weight read from the memory-mapped files as float32 on the
    /// CPU when asked for (callers dispose it through their dispose scope).
    /// </summary>
    public static BaseModelView From(CheckpointFiles files, ModelConfig config) =>
        new(config.NumLayers, (l, p) => files.Read(WeightName(l, p), ScalarType.Float32), IdentityOf(config),
            (l, p) =>
            {
                var s = files.Info(WeightName(l, p)).Shape;
                return s.Length == 2 ? ((int)s[0], (int)s[1]) : throw new InvalidDataException($"{files.Directory}: '{WeightName(l, p)}' is not a matrix");
            },
            ScalarType.Float32, torch.CPU, fingerprint: () => CheckpointFingerprint(files, config));

    /// <summary>The architecture numbers folded into the fingerprint (not the dtype: layouts depend on values only).</summary>
    public static string IdentityOf(ModelConfig c) =>
        $"llama h={c.HiddenSize} ffn={c.IntermediateSize} layers={c.NumLayers} heads={c.NumHeads} kv={c.NumKvHeads} d={c.HeadDim} vocab={c.VocabSize}";

    public static string WeightName(int layer, Projection p) => $"model.layers.{layer}.{ProjectionNames.ModulePath(p)}.weight";

    public int LayerCount { get; }
    public Device Device { get; }
    /// <summary>The compute dtype: adapter factors and anchors are kept in it.</summary>
    public ScalarType DType { get; }
    public string Identity { get; }

    /// <summary>W [out, in] as the model computes with it.</summary>
    public Tensor Weight(int layer, Projection p) => _weight(layer, p);

    /// <summary>
    /// The group's parts' weights stacked, [Σ out, in], as the model's fused GEMM uses them (the folded SMoA form multiplies
    /// with it). Views without a model concatenate the parts into the caller's dispose scope.
    /// </summary>
    public Tensor GroupWeight(int layer, ProjectionGroup g) =>
        _groupWeight?.Invoke(layer, g) ?? torch.cat(ProjectionGroups.Parts(g).Select(p => _weight(layer, p)).ToArray(), 0);

    /// <summary>True when <see cref="GroupWeight"/> returns the model's own tensor (else a new one the caller owns).</summary>
    public bool OwnsGroupWeights => _groupWeight is not null;

    /// <summary>W [out, in] at checkpoint precision, for the SMoA layout's SVD.</summary>
    public Tensor LayoutWeight(int layer, Projection p) => _layoutWeight(layer, p);

    /// <summary>
    /// ‖W‖_F of one projection at checkpoint precision (summed in float64), computed once and cached. Reads the checkpoint
    /// file when the view has one, so it can run on any thread (adapter validation runs off the model thread).
    /// </summary>
    public double WeightNorm(int layer, Projection p) => _norms.GetOrAdd((layer, p), key =>
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        return _layoutWeight(key.Item1, key.Item2).to(ScalarType.Float64).norm().item<double>();
    });

    /// <summary>(out, in) of a projection; the same in every layer of a Llama model.</summary>
    public (int Out, int In) Shape(int layer, Projection p)
    {
        if (_shape is not null) return _shape(layer, p);
        using var scope = NewDisposeScope();
        var w = _weight(layer, p);
        return ((int)w.shape[0], (int)w.shape[1]);
    }

    /// <summary>
    /// 24 hex digits of SHA-256 over the architecture, every projection's shape and 256 evenly spaced values of it, so a
    /// different checkpoint gets a different layout-cache folder.
    /// </summary>
    public string Fingerprint => _fingerprint ??= _fingerprintSource?.Invoke() ?? TensorFingerprint();

    private string TensorFingerprint()
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        sha.AppendData(System.Text.Encoding.UTF8.GetBytes(Identity));
        for (int layer = 0; layer < LayerCount; layer++)
            foreach (var p in Enum.GetValues<Projection>())
            {
                using var scope = NewDisposeScope();
                var w = _layoutWeight(layer, p);
                sha.AppendData(BitConverter.GetBytes(w.shape[0])); sha.AppendData(BitConverter.GetBytes(w.shape[1]));
                long count = w.NumberOfElements;
                var positions = linspace(0, count - 1, (int)Math.Min(256, count), dtype: ScalarType.Float64).to(ScalarType.Int64).to(w.device);
                var sample = w.reshape(-1).index_select(0, positions).to(ScalarType.Float32).cpu();
                sha.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(sample.data<float>().ToArray().AsSpan()));
            }
        return Convert.ToHexString(sha.GetHashAndReset())[..24].ToLowerInvariant();
    }

    /// <summary>The same idea over a checkpoint's raw bytes (dtype, shape, 256 sampled elements): no tensor is read.</summary>
    private static string CheckpointFingerprint(CheckpointFiles files, ModelConfig config)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        sha.AppendData(System.Text.Encoding.UTF8.GetBytes(IdentityOf(config) + " checkpoint"));
        for (int layer = 0; layer < config.NumLayers; layer++)
            foreach (var p in Enum.GetValues<Projection>())
            {
                string name = WeightName(layer, p);
                var info = files.Info(name);
                sha.AppendData(System.Text.Encoding.UTF8.GetBytes($"{name} {info.DType} [{string.Join(",", info.Shape)}]"));
                int size = SafeTensorDTypes.ElementSize(info.DType);
                long count = info.ElementCount;
                if (count == 0) continue;
                if (info.ByteLength > int.MaxValue)
                {
                    using var scope = NewDisposeScope();
                    var t = files.Read(name).reshape(-1);
                    var positions = linspace(0, count - 1, (int)Math.Min(256, count), dtype: ScalarType.Float64).to(ScalarType.Int64);
                    sha.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(t.index_select(0, positions).to(ScalarType.Float32).data<float>().ToArray().AsSpan()));
                    continue;
                }
                var bytes = files.FileOf(name).RawBytes(name);
                int samples = (int)Math.Min(256, count);
                for (int i = 0; i < samples; i++)
                {
                    long element = samples == 1 ? 0 : i * (count - 1) / (samples - 1);
                    sha.AppendData(bytes.Slice((int)(element * size), size));
                }
            }
        return Convert.ToHexString(sha.GetHashAndReset())[..24].ToLowerInvariant();
    }
}
