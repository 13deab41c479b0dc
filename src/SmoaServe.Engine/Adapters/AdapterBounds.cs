using SmoaServe.Engine.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Adapters;

/// <summary>
/// The load-time bound on how large an adapter's update may be relative to the frozen weight it modifies.
///
/// The measure is ρ = ‖ΔW‖_F / ‖W‖_F per adapted module (scale included), which bounds the update of every input:
/// ‖ΔW x‖ ≤ ‖ΔW‖_F ‖x‖ = ρ ‖W‖_F ‖x‖. It is computed without forming ΔW:
///   LoRA  ΔW = s·B A:          ‖ΔW‖_F² = s² Σ_ij (BᵀB)_ij (AAᵀ)_ij, exactly, from two r × r Gram matrices (float64);
///   SMoA  ΔW = s·(B_k A_k) ⊙ W on block k: every entry is W_ij times s·(B_k A_k)_ij, and by Cauchy–Schwarz
///         |(B_k A_k)_ij| ≤ ‖B_k[i, :]‖ ‖A_k[:, j]‖, so ρ ≤ γ = s · max_k max_i ‖B_k[i, :]‖ · max_j ‖A_k[:, j]‖
///         (γ also bounds the element-wise modulation |ΔW_ij / W_ij|); γ needs no base weight.
///
/// The limit, <see cref="MaxRelativeUpdate"/> = 100: a trained adapter changes its weights by a fraction of their norm
/// (ρ well below 1; ρ = 1 would replace the weight's whole content), so 100 leaves two orders of magnitude for unusual
/// but legitimate adapters. Below it nothing overflows: each decoder block normalises its input (RMSNorm), so an adapted
/// block's output is at most (1 + ρ)³ ≈ 10⁶ times the base's (q·k, the gated MLP's product and down projection) and the
/// residual stream grows additively across layers, far from float32 / bfloat16's 3.4e38; an adapter past it (e.g. a
/// factor filled with 3e38, finite but absurd) is refused at load. Whatever an adapter that passes does, a row whose
/// logits are not finite ends with an error of its own (the scheduler checks), and no other row sees its values.
/// </summary>
public static class AdapterBounds
{
    public const double MaxRelativeUpdate = 100;

    /// <summary>ρ of one module (LoRA exactly; SMoA its bound γ); <paramref name="weightNorm"/> ‖W‖_F is used by LoRA only.</summary>
    public static double RelativeUpdate(AdapterConfig config, ModuleFactors factors, Func<double> weightNorm)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        double s = Math.Abs(config.Scaling);
        if (config.Kind == AdapterKind.Lora)
        {
            var a = factors.A[0]!.to(ScalarType.Float64);                                  // [r, in]
            var b = factors.B[0]!.to(ScalarType.Float64);                                  // [out, r]
            double deltaNorm = s * Math.Sqrt(Math.Max(0, (b.t().matmul(b) * a.matmul(a.t())).sum().item<double>()));
            if (!double.IsFinite(deltaNorm)) return double.PositiveInfinity;
            if (deltaNorm == 0) return 0;
            double w = weightNorm();
            return w > 0 ? deltaNorm / w : double.PositiveInfinity;
        }
        double gamma = 0;
        for (int k = 0; k < factors.A.Length; k++)
        {
            if (factors.A[k] is not { } ak || factors.B[k] is not { } bk) continue;
            double maxRow = bk.to(ScalarType.Float64).pow(2).sum(1).max().item<double>();     // max_i ‖B_k[i, :]‖²
            double maxCol = ak.to(ScalarType.Float64).pow(2).sum(0L).max().item<double>();     // max_j ‖A_k[:, j]‖²
            gamma = Math.Max(gamma, s * Math.Sqrt(maxRow) * Math.Sqrt(maxCol));
        }
        return double.IsFinite(gamma) ? gamma : double.PositiveInfinity;
    }

    /// <summary>Refuses an adapter with a module whose ρ exceeds <paramref name="limit"/>, naming the module and its ρ.</summary>
    public static void Check(AdapterDefinition adapter, BaseModelView model, string source, double limit = MaxRelativeUpdate)
    {
        foreach (var ((layer, proj), factors) in adapter.Modules.OrderBy(e => e.Key))
        {
            double rho = RelativeUpdate(adapter.Config, factors, () => model.WeightNorm(layer, proj));
            if (!(rho <= limit))
                throw new InvalidDataException(
                    $"{source}: layer {layer} {ProjectionNames.ModuleName(proj)}: the update is {(double.IsFinite(rho) ? rho.ToString("g3") : "infinitely")} times " +
                    $"the weight it modifies (‖ΔW‖_F / ‖W‖_F{(adapter.Config.Kind == AdapterKind.Smoa ? ", bounded from the factors" : "")}); at most {limit} is accepted");
        }
    }
}
