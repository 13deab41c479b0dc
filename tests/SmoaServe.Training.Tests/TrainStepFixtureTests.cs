using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Checkpoints;
using SmoaServe.Training.Adapters;
using SmoaServe.Training.Data;
using TorchSharp;
using Xunit.Abstractions;
using static SmoaServe.Training.Tests.TestSupport;

namespace SmoaServe.Training.Tests;

/// <summary>
/// The reference training steps (tests/fixtures/README.md, "Training-step references"): three AdamW steps from the
/// fixture's SMoA and LoRA adapters on a fixed batch, met within the stated float32 tolerances.
/// </summary>
public sealed class TrainStepFixtureTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData("train-step-smoa.safetensors", "smoa-adapter", SmoaTrainingForm.Blockwise)]
    [InlineData("train-step-smoa.safetensors", "smoa-adapter", SmoaTrainingForm.Folded)]
    [InlineData("train-step-lora.safetensors", "lora-adapter", SmoaTrainingForm.Auto)]
    public void Three_steps_meet_the_reference(string fixture, string adapterDir, SmoaTrainingForm form)
    {
        var model = Model;
        using var reference = SafeTensorsFile.Open(Path.Combine(LlamaA, fixture));
        using var definition = AdapterFiles.Read(Path.Combine(LlamaA, adapterDir), BaseModelView.From(model));
        using var adapter = TrainableAdapter.FromDefinition(model, definition);
        adapter.Form = form;
        using var ids = reference.ReadTensor("input_ids");
        using var mask = reference.ReadTensor("attention_mask");
        using var labels = reference.ReadTensor("labels");
        using var batch = TrainingBatch.FromTensors(ids, mask, labels, model.Config.VocabSize, model.Device);
        Assert.Null(batch.Mask);   // right-padded: the causal mask alone

        using var report = TrainStepRecipe.Run(model, adapter, batch, steps: 3, learningRate: 1e-2, weightDecay: 0.1, maxGradNorm: 0.25);

        var losses = ReadFloats(reference, "loss_steps");
        var norms = ReadFloats(reference, "grad_norm_steps");
        for (int s = 0; s < 3; s++)
        {
            output.WriteLine($"step {s + 1}: |Δloss| {Math.Abs(report.Losses[s] - losses[s]):E2}, grad norm rel. error {Math.Abs(report.GradNorms[s] - norms[s]) / norms[s]:E2}");
            Assert.True(Math.Abs(report.Losses[s] - losses[s]) <= 1e-4, $"step {s + 1}: loss {report.Losses[s]} vs {losses[s]}");
            Assert.True(Math.Abs(report.GradNorms[s] - norms[s]) <= 1e-3 * norms[s], $"step {s + 1}: grad norm {report.GradNorms[s]} vs {norms[s]}");
        }

        var gradKeys = reference.Names.Where(n => n.StartsWith("grad.", StringComparison.Ordinal)).Select(n => n[5..]).ToHashSet();
        Assert.Equal(gradKeys, report.FirstGradients.Select(g => g.Key).ToHashSet());
        double worstGrad = 0;
        foreach (var (key, grad) in report.FirstGradients)
        {
            var expected = ReadFloats(reference, "grad." + key);
            double error = MaxAbsDiff(Floats(grad), expected);
            worstGrad = Math.Max(worstGrad, error / (1 + MaxAbs(expected)));
            Assert.True(error <= 1e-4 * (1 + MaxAbs(expected)), $"grad {key}: max error {error}");
        }

        Assert.Equal(gradKeys, report.After.Select(a => a.Key).ToHashSet());
        long total = 0, close = 0;
        double worst = 0;
        foreach (var (key, value) in report.After)
        {
            var actual = Floats(value);
            var expected = ReadFloats(reference, "after." + key);
            Assert.Equal(expected.Length, actual.Length);
            for (int i = 0; i < actual.Length; i++)
            {
                double d = Math.Abs((double)actual[i] - expected[i]);
                total++;
                if (d <= 1e-4) close++;
                worst = Math.Max(worst, d);
            }
        }
        output.WriteLine($"grad: worst max error / (1 + max |grad|) {worstGrad:E2}; after: {close} of {total} within 1e-4, worst {worst:E2}");
        Assert.True(close >= 0.995 * total, $"after: {close} of {total} elements within 1e-4");
        Assert.True(worst <= 5e-2, $"after: worst element off by {worst}");
    }
}
