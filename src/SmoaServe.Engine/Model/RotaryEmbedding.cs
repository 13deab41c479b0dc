using SmoaServe.Engine.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Model;

/// <summary>
/// LlamaRotaryEmbedding: inverse frequencies (default / linear / llama3 scaling) and cos/sin computed in float32 with
/// the same operations as Hugging Face, then cast to the compute dtype; applied with HF's rotate_half convention.
/// </summary>
public sealed class RotaryEmbedding
{
    public Tensor InvFreq { get; }   // float32 [headDim / 2], on the model's device
    public int HeadDim { get; }

    public RotaryEmbedding(RopeConfig rope, int headDim, Device device)
    {
        HeadDim = headDim;
        using var cpu = ComputeInvFreq(rope, headDim);
        InvFreq = cpu.to(device).DetachFromDisposeScope();
    }

    /// <summary>Inverse frequencies [headDim / 2] in float32 (HF _compute_default/linear/llama3_rope_parameters).</summary>
    public static Tensor ComputeInvFreq(RopeConfig rope, int headDim)
    {
        using var scope = torch.NewDisposeScope();
        // 1 / (theta ** (arange(0, dim, 2) / dim))
        var exponent = torch.arange(0, headDim, 2, dtype: ScalarType.Int64).to_type(ScalarType.Float32) / headDim;
        var invFreq = torch.full_like(exponent, rope.Theta).pow(exponent).reciprocal();
        invFreq = rope.Type switch
        {
            "default" => invFreq,
            "linear" => invFreq / rope.Factor,
            "llama3" => Llama3Scaling(invFreq, rope),
            _ => throw new NotSupportedException($"rope type '{rope.Type}' is not supported"),
        };
        return invFreq.MoveToOuterDisposeScope();
    }

    /// <summary>Llama 3.1 scaling: long wavelengths divided by factor, short ones kept, a smooth blend in between.</summary>
    private static Tensor Llama3Scaling(Tensor invFreq, RopeConfig rope)
    {
        double oldContext = rope.OriginalMaxPositionEmbeddings;
        double lowFreqWavelen = oldContext / rope.LowFreqFactor;
        double highFreqWavelen = oldContext / rope.HighFreqFactor;
        var wavelen = invFreq.reciprocal() * (2 * Math.PI);
        var scaled = torch.where(wavelen > lowFreqWavelen, invFreq / rope.Factor, invFreq);
        var smooth = (wavelen.reciprocal() * oldContext - rope.LowFreqFactor) / (rope.HighFreqFactor - rope.LowFreqFactor);
        var smoothed = (1.0 - smooth) * scaled / rope.Factor + smooth * scaled;
        var isMedium = (wavelen < highFreqWavelen).logical_not().logical_and((wavelen > lowFreqWavelen).logical_not());
        return torch.where(isMedium, smoothed, scaled);
    }

    /// <summary>cos and sin [B, T, headDim] in <paramref name="dtype"/> for integer positions [B, T].</summary>
    public (Tensor Cos, Tensor Sin) CosSin(Tensor positions, ScalarType dtype)
    {
        using var scope = torch.NewDisposeScope();
        var freqs = positions.to_type(ScalarType.Float32).unsqueeze(-1) * InvFreq; // [B, T, D/2] float32
        var emb = torch.cat([freqs, freqs], -1);                                 // [B, T, D]
        var cos = emb.cos().to_type(dtype);
        var sin = emb.sin().to_type(dtype);
        return (cos.MoveToOuterDisposeScope(), sin.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// x * cos + rotate_half(x) * sin for x [B, H, T, D], with cos [B, 1, T, D] and <paramref name="signedSin"/> =
    /// cat(-sin₁, sin₂) [B, 1, T, D] (see <see cref="SignedSin"/>): rotate_half(x) * sin = roll(x, D/2) * signedSin,
    /// the same products (a sign moved from one factor to the other is exact), in four operations instead of nine.
    /// </summary>
    public static Tensor ApplySigned(Tensor x, Tensor cos, Tensor signedSin)
    {
        using var rolled = x.roll(x.shape[^1] / 2, -1);
        using var rotated = rolled * signedSin;
        using var scaled = x * cos;
        return scaled + rotated;
    }

    /// <summary>cat(-sin[..., :D/2], sin[..., D/2:]) for sin [..., D].</summary>
    public static Tensor SignedSin(Tensor sin)
    {
        using var scope = torch.NewDisposeScope();
        long half = sin.shape[^1] / 2;
        return torch.cat([sin.narrow(-1, 0, half).neg(), sin.narrow(-1, half, half)], -1).MoveToOuterDisposeScope();
    }

    /// <summary>x * cos + rotate_half(x) * sin for x [B, H, T, D] and cos/sin [B, T, D].</summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        using var scope = torch.NewDisposeScope();
        var c = cos.unsqueeze(1); // [B, 1, T, D]
        var s = sin.unsqueeze(1);
        return (x * c + RotateHalf(x) * s).MoveToOuterDisposeScope();
    }

    /// <summary>[x1, x2] → [-x2, x1] on the last dimension (halves, not interleaved pairs).</summary>
    private static Tensor RotateHalf(Tensor x)
    {
        long half = x.shape[^1] / 2;
        var x1 = x.narrow(-1, 0, half);
        var x2 = x.narrow(-1, half, half);
        return torch.cat([x2.neg(), x1], -1);
    }
}
