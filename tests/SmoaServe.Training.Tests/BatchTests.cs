using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Model;
using SmoaServe.Training.Adapters;
using SmoaServe.Training.Data;
using TorchSharp;
using static SmoaServe.Training.Tests.TestSupport;
using static TorchSharp.torch;

namespace SmoaServe.Training.Tests;

/// <summary>Padding and packing cannot change what a sequence contributes: its loss and its gradients.</summary>
public sealed class BatchTests
{
    internal static TokenizedExample Example(int seed, int length, int promptLength)
    {
        var rng = new Random(seed);
        var ids = Enumerable.Range(0, length).Select(_ => rng.Next(1000)).ToArray();
        return new TokenizedExample(seed, ids, Enumerable.Range(0, length).Select(t => t >= promptLength).ToArray());
    }

    /// <summary>An adapter with random non-zero factors (so every factor gets a gradient).</summary>
    internal static TrainableAdapter RandomAdapter(AdapterConfig config, int seed = 3)
    {
        using var definition = SyntheticAdapters.Create(BaseModelView.From(Model), config, seed);
        return TrainableAdapter.FromDefinition(Model, definition);
    }

    internal static AdapterConfig SmoaAll => AdapterConfig.Smoa(4, 2, 8, Enum.GetValues<Projection>());

    /// <summary>Σ loss over the batch and every parameter's gradient of that sum.</summary>
    private static (double Loss, float[][] Grads) LossAndGradients(TrainableAdapter adapter, TrainingBatch batch)
    {
        using var scope = NewDisposeScope();
        using var grad = enable_grad();
        foreach (var p in adapter.Parameters) p.Value.grad = null;
        var result = CausalLmLoss.Compute(Model, batch, adapter.CreateHook());
        result.Sum.backward();
        var grads = adapter.Parameters.Select(p => Floats(p.Value.grad!)).ToArray();
        foreach (var p in adapter.Parameters) p.Value.grad = null;
        return (result.Sum.item<float>(), grads);
    }

    private static void AssertClose((double Loss, float[][] Grads) expected, (double Loss, float[][] Grads) actual)
    {
        Assert.True(Math.Abs(expected.Loss - actual.Loss) <= 1e-4 * Math.Abs(expected.Loss), $"loss {actual.Loss} vs {expected.Loss}");
        for (int i = 0; i < expected.Grads.Length; i++)
        {
            double scale = 1 + MaxAbs(expected.Grads[i]);
            Assert.True(MaxAbsDiff(expected.Grads[i], actual.Grads[i]) <= 1e-4 * scale, $"gradient {i}");
        }
    }

    private static (double, float[][]) Sum((double Loss, float[][] Grads) a, (double Loss, float[][] Grads) b) =>
        (a.Loss + b.Loss, a.Grads.Zip(b.Grads, (x, y) => x.Zip(y, (u, v) => u + v).ToArray()).ToArray());

    [Fact]
    public void Right_padding_changes_neither_loss_nor_gradients()
    {
        using var adapter = RandomAdapter(SmoaAll);
        var shortOne = Example(1, 9, 4);
        var longOne = Example(2, 23, 10);
        using var alone1 = TrainingBatch.Padded([shortOne], Model.Device);
        using var alone2 = TrainingBatch.Padded([longOne], Model.Device);
        using var together = TrainingBatch.Padded([shortOne, longOne], Model.Device, padId: 77);
        Assert.Equal(23, together.Length);
        Assert.Equal(32, together.Tokens);
        Assert.Equal(5 + 13, together.ScoredCount);
        AssertClose(Sum(LossAndGradients(adapter, alone1), LossAndGradients(adapter, alone2)), LossAndGradients(adapter, together));
    }

    [Fact]
    public void Packed_examples_do_not_see_each_other()
    {
        using var adapter = RandomAdapter(SmoaAll);
        var a = Example(4, 11, 3);
        var b = Example(5, 17, 8);
        var c = Example(6, 6, 2);
        using var padded = TrainingBatch.Padded([a, b, c], Model.Device);
        using var packed = TrainingBatch.Packed([[a, b], [c]], Model.Device);
        Assert.Equal(2, packed.Rows);
        Assert.Equal(28, packed.Length);
        Assert.NotNull(packed.Mask);
        AssertClose(LossAndGradients(adapter, padded), LossAndGradients(adapter, packed));
    }

    [Fact]
    public void Hugging_face_tensors_right_padded_use_the_causal_mask_and_other_masks_are_applied()
    {
        using var ids = tensor(new long[] { 5, 6, 7, 8, 9, 10, 0, 0 }).view(2, 4);
        using var rightMask = tensor(new long[] { 1, 1, 1, 1, 1, 1, 0, 0 }).view(2, 4);
        using var labels = tensor(new long[] { -100, 6, 7, 8, -100, 10, -100, -100 }).view(2, 4);
        using var right = TrainingBatch.FromTensors(ids, rightMask, labels, 1024, Model.Device);
        Assert.Null(right.Mask);
        Assert.Equal(6, right.Tokens);
        Assert.Equal(new long[] { 0, 1, 2, 4 }, right.LossPositions.data<long>().ToArray());
        Assert.Equal(new long[] { 6, 7, 8, 10 }, right.LossTargets.data<long>().ToArray());

        using var leftMask = tensor(new long[] { 1, 1, 1, 1, 0, 1, 1, 1 }).view(2, 4);
        using var left = TrainingBatch.FromTensors(ids, leftMask, labels, 1024, Model.Device);
        Assert.NotNull(left.Mask);
        Assert.False(left.Mask![1, 0, 2, 0].item<bool>());   // row 1 masks its first token
        Assert.True(left.Mask![1, 0, 2, 1].item<bool>());
        using var adapter = RandomAdapter(SmoaAll);
        Assert.True(double.IsFinite(LossAndGradients(adapter, left).Loss));

        using var bad = tensor(new long[] { 5, 6, 7, 2000, 9, 10, 0, 0 }).view(2, 4);
        Assert.Throws<InvalidDataException>(() => TrainingBatch.FromTensors(bad, rightMask, labels, 1024, Model.Device));
    }
}
