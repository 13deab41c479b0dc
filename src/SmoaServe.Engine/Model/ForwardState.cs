using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Model;

/// <summary>What every layer of one forward shares: rotary cos/sin, the attention mask, the KV cache access, the adapters.</summary>
public sealed class ForwardState
{
    /// <summary>[B, T, headDim] in the compute dtype.</summary>
    public required Tensor Cos { get; init; }
    public required Tensor Sin { get; init; }
    /// <summary>Boolean [B, 1, T, L] (true = may attend), or null with <see cref="IsCausal"/> / no mask.</summary>
    public Tensor? Mask { get; init; }
    /// <summary>The same mask as an additive bias (0 / -inf) in the compute dtype, for the written-out decode attention.</summary>
    public Tensor? AttentionBias { get; init; }
    /// <summary>Plain causal attention over exactly the T new tokens (prefill from position 0).</summary>
    public bool IsCausal { get; init; }
    /// <summary>Null: attend over the new tokens only (no cache).</summary>
    public IKvAccess? Cache { get; init; }
    public IAdapterBatch? Adapters { get; init; }

    private (Tensor Cos, Tensor SignedSin)? _rotary;

    /// <summary>cos and the signed sin as [B, 1, T, D], made once per forward by the first layer (owned by the caller's scope).</summary>
    internal (Tensor Cos, Tensor SignedSin) RotaryFactors() =>
        _rotary ??= (Cos.unsqueeze(1), RotaryEmbedding.SignedSin(Sin).unsqueeze(1));
}
