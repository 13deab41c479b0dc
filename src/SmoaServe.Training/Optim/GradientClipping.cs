using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Training.Optim;

/// <summary>torch.nn.utils.clip_grad_norm_ over a set of parameters (all together, L2).</summary>
public static class GradientClipping
{
    /// <summary>
    /// The total L2 norm of every gradient (the norm of the per-tensor norms, as PyTorch computes it); when
    /// <paramref name="maxNorm"/> &gt; 0 every gradient is then scaled by min(1, maxNorm / (norm + 1e-6)).
    /// </summary>
    /// <returns>the norm before clipping (NaN or infinity when a gradient is not finite; nothing is scaled then)</returns>
    public static double ClipTotalNorm(IEnumerable<Tensor> parameters, double maxNorm)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var grads = parameters.Select(p => p.grad).Where(g => g is not null).Select(g => g!).ToList();
        if (grads.Count == 0) return 0;
        var norms = stack(grads.Select(g => linalg.vector_norm(g.to(ScalarType.Float32))).ToArray());
        var total = linalg.vector_norm(norms);
        double norm = total.item<float>();
        if (maxNorm > 0 && double.IsFinite(norm))
        {
            var coefficient = (maxNorm / (total + 1e-6)).clamp_max(1.0);
            foreach (var g in grads) g.mul_(coefficient.to(g.dtype));
        }
        return norm;
    }
}
