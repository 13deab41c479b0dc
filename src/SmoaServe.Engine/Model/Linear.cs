using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace SmoaServe.Engine.Model;

/// <summary>A frozen projection y = x Wᵀ (+ b): one part of a <see cref="FusedLinear"/> (its weight is a view of the group's rows).</summary>
public sealed class Linear(Tensor weight, Tensor? bias)
{
    public Tensor Weight { get; } = weight; // [out, in]
    public Tensor? Bias { get; } = bias;    // [out]
}

/// <summary>
/// The projections of one <see cref="ProjectionGroup"/> computed in one GEMM: the weight is cat(W_1, ..., W_n) [Σ out, in]
/// and each part's <see cref="Linear"/> holds views of its rows. The batch's adapters update every part's columns of
/// the output right after the GEMM.
/// </summary>
public sealed class FusedLinear
{
    private readonly int _layer;
    private readonly long[] _offsets, _sizes;

    public ProjectionGroup Group { get; }
    public Tensor Weight { get; }  // [Σ out_i, in]
    public Tensor? Bias { get; }   // [Σ out_i]
    public IReadOnlyList<Linear> Parts { get; }
    /// <summary>The CPU decode kernel over <see cref="Weight"/> (float32 CPU models), or null.</summary>
    public CpuGemv? Kernel { get; private set; }

    /// <summary>Concatenates the parts' weights (and biases), given in <see cref="ProjectionGroups.Parts"/> order, and disposes the originals.</summary>
    public FusedLinear(int layer, ProjectionGroup group, IReadOnlyList<(Tensor Weight, Tensor? Bias)> parts)
    {
        if (parts.Count != ProjectionGroups.Parts(group).Count) throw new ArgumentException($"{group} has {ProjectionGroups.Parts(group).Count} parts, got {parts.Count}");
        _layer = layer;
        Group = group;
        _sizes = parts.Select(p => p.Weight.shape[0]).ToArray();
        _offsets = new long[_sizes.Length];
        for (int i = 1; i < _sizes.Length; i++) _offsets[i] = _offsets[i - 1] + _sizes[i - 1];

        if (parts.Count == 1)
        {
            Weight = parts[0].Weight.DetachFromDisposeScope();
            Bias = parts[0].Bias?.DetachFromDisposeScope();
        }
        else
        {
            Weight = torch.cat(parts.Select(p => p.Weight).ToArray(), 0).DetachFromDisposeScope();
            bool hasBias = parts.All(p => p.Bias is not null);
            Bias = hasBias ? torch.cat(parts.Select(p => p.Bias!).ToArray(), 0).DetachFromDisposeScope() : null;
            foreach (var p in parts) { p.Weight.Dispose(); p.Bias?.Dispose(); }
        }

        Parts = Enumerable.Range(0, _sizes.Length)
            .Select(i => parts.Count == 1 ? new Linear(Weight, Bias) : new Linear(Weight.narrow(0, _offsets[i], _sizes[i]), Bias?.narrow(0, _offsets[i], _sizes[i])))
            .ToArray();
    }

    /// <summary>Streams the weight through <see cref="CpuGemv"/> for few-row inputs (decode) from now on.</summary>
    public void UseKernel(WeightStorage storage) => Kernel = new CpuGemv(Weight, Bias, storage);

    /// <returns>[B, T, Σ out_i]: every part's output (with its adapter update), side by side</returns>
    public Tensor Forward(Tensor x, IAdapterBatch? adapters)
    {
        var y = Kernel is { } k && CpuGemv.Enabled && k.Accepts(x) ? k.Forward(x) : F.linear(x, Weight, Bias);
        return adapters is null ? y : adapters.Apply(_layer, Group, x, y);
    }

    /// <summary>Part <paramref name="i"/>'s columns of a <see cref="Forward"/> output (a view).</summary>
    public Tensor Part(Tensor y, int i) => y.narrow(-1, _offsets[i], _sizes[i]);

    public void Dispose()
    {
        Kernel?.Dispose();
        if (Parts.Count > 1) foreach (var p in Parts) { p.Weight.Dispose(); p.Bias?.Dispose(); }
        Weight.Dispose();
        Bias?.Dispose();
    }
}
