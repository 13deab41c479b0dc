using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Model;

/// <summary>LlamaRMSNorm: normalise in float32, cast back to the input dtype, then scale by the weight.</summary>
public sealed class RmsNorm(Tensor weight, double eps)
{
    public Tensor Weight { get; } = weight; // [hidden]
    public double Eps { get; } = eps;

    public Tensor Forward(Tensor x) // [..., hidden]
    {
        if (CpuDecode.Applies(x, Weight.shape[0]) && Weight.dtype == ScalarType.Float32) return CpuDecode.RmsNorm(x, Weight, Eps);
        var inputType = x.dtype;
        if (inputType == ScalarType.Float32)
        {
            // float32 already: the same arithmetic without the two casts (six operations, no scope)
            using var meanSquare = x.pow(2).mean([-1L], keepdim: true);
            using var denominator = meanSquare + Eps;
            using var inverse = torch.rsqrt(denominator);
            using var normalised = x * inverse;
            return Weight * normalised;
        }
        using var scope = torch.NewDisposeScope();
        var h = x.to_type(ScalarType.Float32);
        var variance = h.pow(2).mean([-1L], keepdim: true);
        h = h * torch.rsqrt(variance + Eps);
        return (Weight * h.to_type(inputType)).MoveToOuterDisposeScope();
    }
}
