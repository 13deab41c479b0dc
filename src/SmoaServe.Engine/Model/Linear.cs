using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace SmoaServe.Engine.Model;

/// <summary>A frozen projection y = x Wᵀ (+ b), then y += the batch's adapter update for (layer, projection).</summary>
public sealed class Linear(Tensor weight, Tensor? bias)
{
    public Tensor Weight { get; } = weight; // [out, in]
    public Tensor? Bias { get; } = bias;    // [out]

    public Tensor Forward(Tensor x, int layer, Projection projection, IAdapterBatch? adapters)
    {
        var y = F.linear(x, Weight, Bias);
        return adapters is null ? y : adapters.Apply(layer, projection, x, y);
    }
}

/// <summary>
/// Projections of the same input computed in one GEMM (q/k/v, gate/up): the weight is cat(W_1, ..., W_n) [Σ out, in]
/// and each part's <see cref="Linear"/> holds views of its rows. Every part still gets its own adapter update.
/// </summary>
public sealed class FusedLinear
{
    private readonly int _layer;
    private readonly Projection[] _projections;
    private readonly long[] _offsets, _sizes;

    public Tensor Weight { get; }  // [Σ out_i, in]
    public Tensor? Bias { get; }   // [Σ out_i]
    public IReadOnlyList<Linear> Parts { get; }

    /// <summary>Concatenates the parts' weights (and biases) and disposes the originals.</summary>
    public FusedLinear(int layer, IReadOnlyList<(Projection Projection, Tensor Weight, Tensor? Bias)> parts)
    {
        _layer = layer;
        _projections = parts.Select(p => p.Projection).ToArray();
        _sizes = parts.Select(p => p.Weight.shape[0]).ToArray();
        _offsets = new long[_sizes.Length];
        for (int i = 1; i < _sizes.Length; i++) _offsets[i] = _offsets[i - 1] + _sizes[i - 1];

        Weight = torch.cat(parts.Select(p => p.Weight).ToArray(), 0).DetachFromDisposeScope();
        bool hasBias = parts.All(p => p.Bias is not null);
        Bias = hasBias ? torch.cat(parts.Select(p => p.Bias!).ToArray(), 0).DetachFromDisposeScope() : null;
        foreach (var p in parts) { p.Weight.Dispose(); p.Bias?.Dispose(); }

        Parts = Enumerable.Range(0, _sizes.Length)
            .Select(i => new Linear(Weight.narrow(0, _offsets[i], _sizes[i]), Bias?.narrow(0, _offsets[i], _sizes[i])))
            .ToArray();
    }

    /// <returns>each part's output [B, T, out_i] (views of one GEMM result unless an adapter updated it)</returns>
    public Tensor[] Forward(Tensor x, IAdapterBatch? adapters)
    {
        var y = F.linear(x, Weight, Bias); // [B, T, Σ out_i]
        var outputs = new Tensor[_sizes.Length];
        for (int i = 0; i < outputs.Length; i++)
        {
            outputs[i] = y.narrow(-1, _offsets[i], _sizes[i]);
            if (adapters is not null) outputs[i] = adapters.Apply(_layer, _projections[i], x, outputs[i]);
        }
        return outputs;
    }

    public void Dispose()
    {
        foreach (var p in Parts) { p.Weight.Dispose(); p.Bias?.Dispose(); }
        Weight.Dispose();
        Bias?.Dispose();
    }
}
