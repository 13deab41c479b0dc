using SmoaServe.Engine.Checkpoints;
using SmoaServe.Engine.Model;
using SmoaServe.Training.Adapters;
using SmoaServe.Training.Data;
using SmoaServe.Training.Optim;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Training;

/// <summary>
/// What N training steps on one fixed batch produced: the loss and total gradient norm before each step, the first
/// step's gradients (before clipping) and the adapter after the last step, per adapter_model.safetensors key
/// (float32 CPU tensors, owned by this report).
/// </summary>
public sealed class TrainStepReport : IDisposable
{
    public required float[] Losses { get; init; }
    public required float[] GradNorms { get; init; }
    public required IReadOnlyList<(string Key, Tensor Value)> FirstGradients { get; init; }
    public required IReadOnlyList<(string Key, Tensor Value)> After { get; init; }

    /// <summary>loss_steps, grad_norm_steps, grad.KEY, after.KEY (the layout of the reference training-step files).</summary>
    public void Write(string path)
    {
        using var scope = NewDisposeScope();
        var tensors = new List<(string, Tensor)> { ("loss_steps", tensor(Losses)), ("grad_norm_steps", tensor(GradNorms)) };
        tensors.AddRange(FirstGradients.Select(g => ("grad." + g.Key, g.Value)));
        tensors.AddRange(After.Select(a => ("after." + a.Key, a.Value)));
        SafeTensorsWriter.Write(path, tensors, new Dictionary<string, string> { ["format"] = "pt" });
    }

    public void Dispose()
    {
        foreach (var (_, t) in FirstGradients.Concat(After)) t.Dispose();
    }
}

/// <summary>
/// The exact recipe of the reference training steps: the same batch every step, constant learning rate, loss = mean
/// cross-entropy over the batch's scored labels, clip_grad_norm_ over all adapter tensors, AdamW. The same
/// <see cref="Trainer"/> as `smoa train`, driven one step at a time.
/// </summary>
public static class TrainStepRecipe
{
    public static TrainStepReport Run(LlamaModel model, TrainableAdapter adapter, TrainingBatch batch, int steps,
        double learningRate, double weightDecay, double maxGradNorm)
    {
        if (steps < 1 || steps > 1_000_000) throw new ArgumentOutOfRangeException(nameof(steps), "steps must be between 1 and 1000000");
        var options = new TrainingOptions
        {
            BatchSize = batch.Rows, LearningRate = learningRate, WeightDecay = weightDecay, MaxGradNorm = maxGradNorm,
            Decay = LearningRateDecay.Constant,
        };
        using var trainer = new Trainer(model, adapter, options);
        var losses = new float[steps];
        var norms = new float[steps];
        List<(string, Tensor)> gradients = [];
        for (int s = 0; s < steps; s++)
        {
            var result = trainer.Step([batch], learningRate, s == 0 ? () => gradients = Copies(adapter.Factors(gradients: true)) : null);
            losses[s] = (float)result.Loss;
            norms[s] = (float)result.GradNorm;
        }
        return new TrainStepReport { Losses = losses, GradNorms = norms, FirstGradients = gradients, After = Copies(adapter.Factors()) };
    }

    private static List<(string, Tensor)> Copies(IEnumerable<(string Key, Tensor? Value)> factors)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        return factors.Select(f => (f.Key, (f.Value ?? throw new InvalidOperationException($"{f.Key} has no gradient"))
            .to(ScalarType.Float32).cpu().contiguous().clone().DetachFromDisposeScope())).ToList();
    }
}
