using SmoaServe.Engine.Model;
using SmoaServe.Training.Data;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace SmoaServe.Training;

/// <summary>
/// The causal-LM objective (Hugging Face convention): the logits at position t predict the label at t+1, cross-entropy
/// over the scored positions only. Summed here; the trainer divides by the scored count of the whole batch, so a
/// batch split into micro-batches has the same loss and gradient as in one piece.
/// </summary>
public static class CausalLmLoss
{
    /// <param name="Sum">float32 scalar: Σ −log p(target) over the scored positions (differentiable when grad is on)</param>
    /// <param name="Correct">int64 scalar: scored positions whose argmax is the target</param>
    public readonly record struct Result(Tensor Sum, Tensor Correct);

    /// <summary>One forward of <paramref name="model"/> (with <paramref name="hook"/>) over the batch, into the caller's dispose scope.</summary>
    public static Result Compute(LlamaModel model, TrainingBatch batch, IAdapterBatch? hook)
    {
        var logits = model.Forward(batch.InputIds, batch.State(model, hook));                      // [B, T, V]
        long vocab = logits.shape[2];
        var scored = logits.view(-1, vocab).index_select(0, batch.LossPositions).to_type(ScalarType.Float32);   // [n, V]
        var sum = F.cross_entropy(scored, batch.LossTargets, reduction: nn.Reduction.Sum);
        Tensor correct;
        using (no_grad()) correct = scored.argmax(-1).eq(batch.LossTargets).sum();
        return new Result(sum, correct);
    }
}
