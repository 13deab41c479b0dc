using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Training.Optim;

/// <summary>
/// AdamW exactly as torch.optim.AdamW (decoupled weight decay, bias-corrected moments, eps added after the square
/// root), per parameter:
///   θ ← θ·(1 − lr·λ);  m ← β₁m + (1 − β₁)g;  v ← β₂v + (1 − β₂)g²;
///   θ ← θ − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)
/// Written out rather than TorchSharp's optimizer so that its whole state (moments and per-parameter step counts) can
/// be checkpointed and restored. A parameter without a gradient is skipped, as PyTorch does.
/// </summary>
public sealed class AdamW : IDisposable
{
    private readonly IReadOnlyList<TrainableTensor> _parameters;
    private readonly Tensor[] _expAvg, _expAvgSq;
    private readonly long[] _steps;

    public double Beta1 { get; }
    public double Beta2 { get; }
    public double Epsilon { get; }
    public double WeightDecay { get; }

    public AdamW(IReadOnlyList<TrainableTensor> parameters, double weightDecay, double beta1 = 0.9, double beta2 = 0.999, double epsilon = 1e-8)
    {
        if (!(beta1 >= 0 && beta1 < 1) || !(beta2 >= 0 && beta2 < 1)) throw new ArgumentOutOfRangeException(nameof(beta1), "betas must be in [0, 1)");
        if (!(epsilon > 0)) throw new ArgumentOutOfRangeException(nameof(epsilon), "eps must be positive");
        if (!(weightDecay >= 0) || double.IsInfinity(weightDecay)) throw new ArgumentOutOfRangeException(nameof(weightDecay), "weight decay must be finite and >= 0");
        _parameters = parameters;
        Beta1 = beta1; Beta2 = beta2; Epsilon = epsilon; WeightDecay = weightDecay;
        using var noGrad = no_grad();
        _expAvg = parameters.Select(p => zeros_like(p.Value).DetachFromDisposeScope()).ToArray();
        _expAvgSq = parameters.Select(p => zeros_like(p.Value).DetachFromDisposeScope()).ToArray();
        _steps = new long[parameters.Count];
    }

    /// <summary>Optimizer steps taken by parameter i.</summary>
    public long StepsOf(int i) => _steps[i];

    /// <summary>Updates every parameter that has a gradient with learning rate <paramref name="lr"/>.</summary>
    public void Step(double lr)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        for (int i = 0; i < _parameters.Count; i++)
        {
            var p = _parameters[i].Value;
            var g = p.grad;
            if (g is null) continue;
            long t = ++_steps[i];
            p.mul_(1 - lr * WeightDecay);
            _expAvg[i].lerp_(g, 1 - Beta1);
            _expAvgSq[i].mul_(Beta2).addcmul_(g, g, 1 - Beta2);
            double biasCorrection1 = 1 - Math.Pow(Beta1, t);
            double biasCorrection2Sqrt = Math.Sqrt(1 - Math.Pow(Beta2, t));
            var denom = (_expAvgSq[i].sqrt() / biasCorrection2Sqrt).add_(Epsilon);
            p.addcdiv_(_expAvg[i], denom, -lr / biasCorrection1);
        }
    }

    /// <summary>The state to checkpoint: per parameter its first and second moments (keys exp_avg.NAME / exp_avg_sq.NAME).</summary>
    public IEnumerable<(string Name, Tensor Value)> StateTensors()
    {
        for (int i = 0; i < _parameters.Count; i++)
        {
            yield return ("exp_avg." + _parameters[i].Name, _expAvg[i]);
            yield return ("exp_avg_sq." + _parameters[i].Name, _expAvgSq[i]);
        }
    }

    public long[] Steps => (long[])_steps.Clone();

    /// <summary>Restores moments and step counts written by <see cref="StateTensors"/> / <see cref="Steps"/>.</summary>
    /// <param name="read">name → tensor (any device; copied), or an exception naming what is missing</param>
    public void LoadState(Func<string, long[], Tensor> read, IReadOnlyList<long> steps)
    {
        if (steps.Count != _parameters.Count) throw new InvalidDataException($"optimizer state has {steps.Count} step counts for {_parameters.Count} parameters");
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        for (int i = 0; i < _parameters.Count; i++)
        {
            if (steps[i] < 0) throw new InvalidDataException($"optimizer step count {steps[i]} is negative");
            _expAvg[i].copy_(read("exp_avg." + _parameters[i].Name, _expAvg[i].shape));
            _expAvgSq[i].copy_(read("exp_avg_sq." + _parameters[i].Name, _expAvgSq[i].shape));
            _steps[i] = steps[i];
        }
    }

    public void Dispose()
    {
        foreach (var t in _expAvg.Concat(_expAvgSq)) t.Dispose();
    }
}
