using SmoaServe.Engine.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Training;

/// <summary>One tensor the optimizer updates: a leaf with requires_grad, float32, on the model's device. The name is its
/// key in training checkpoints.</summary>
public sealed record TrainableTensor(string Name, Tensor Value);

/// <summary>
/// What a <see cref="Trainer"/> trains on top of a frozen <see cref="LlamaModel"/>: the tensors to update and how the
/// model's forward reaches them. An adapter returns a hook (the forward's <see cref="IAdapterBatch"/>) that adds its
/// ΔW x differentiably; a full-parameter variant would mark the model's own weights trainable and return no hook.
/// </summary>
public interface ITrainable : IDisposable
{
    /// <summary>Every trainable leaf, in a fixed order (the optimizer state and checkpoints follow it).</summary>
    IReadOnlyList<TrainableTensor> Parameters { get; }

    /// <summary>The hook for one forward (created per step, inside the step's dispose scope), or null.</summary>
    IAdapterBatch? CreateHook();

    /// <summary>Describes the trainable for checkpoints: a resumed run must describe itself the same way.</summary>
    string Describe();
}
