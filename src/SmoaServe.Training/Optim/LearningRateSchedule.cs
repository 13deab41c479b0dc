namespace SmoaServe.Training.Optim;

public enum LearningRateDecay { Cosine, Linear, Constant }

/// <summary>
/// Linear warmup from 0 to the peak over the first <see cref="WarmupSteps"/> steps, then cosine or linear decay to 0
/// at <see cref="TotalSteps"/> (or constant), as Hugging Face's get_cosine / get_linear_schedule_with_warmup: the
/// optimizer step with 0-based index s uses peak · factor(s).
/// </summary>
public sealed record LearningRateSchedule(double Peak, int TotalSteps, int WarmupSteps, LearningRateDecay Decay)
{
    /// <summary>Warmup steps = ⌈ratio · total⌉, as Hugging Face's warmup_ratio.</summary>
    public static LearningRateSchedule FromRatio(double peak, int totalSteps, double warmupRatio, LearningRateDecay decay)
    {
        if (!(warmupRatio >= 0 && warmupRatio <= 1)) throw new ArgumentOutOfRangeException(nameof(warmupRatio), "warmup ratio must be in [0, 1]");
        return new(peak, totalSteps, (int)Math.Ceiling(totalSteps * warmupRatio), decay);
    }

    public double At(int step)
    {
        if (step < WarmupSteps) return Peak * step / Math.Max(1, WarmupSteps);
        double progress = (double)(step - WarmupSteps) / Math.Max(1, TotalSteps - WarmupSteps);
        return Decay switch
        {
            LearningRateDecay.Cosine => Peak * Math.Max(0, 0.5 * (1 + Math.Cos(Math.PI * progress))),
            LearningRateDecay.Linear => Peak * Math.Max(0, (double)(TotalSteps - step) / Math.Max(1, TotalSteps - WarmupSteps)),
            _ => Peak,
        };
    }
}
