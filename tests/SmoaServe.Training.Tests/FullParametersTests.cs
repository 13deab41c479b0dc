using SmoaServe.Engine.Checkpoints;
using SmoaServe.Engine.Model;
using SmoaServe.Tests;
using SmoaServe.Training.Data;
using SmoaServe.Training.Pretraining;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Training.Tests;

public sealed class FullParametersTests
{
    private static ModelConfig Tiny => new()
    {
        HiddenSize = 32, IntermediateSize = 64, NumLayers = 2, NumHeads = 4, NumKvHeads = 2, HeadDim = 8, VocabSize = 64,
        RmsNormEps = 1e-5, MaxPositionEmbeddings = 64, TieWordEmbeddings = true, Rope = new RopeConfig("default", 10000.0),
    };

    private static TokenizedExample Example(int line, params int[] ids) => new(line, ids, Enumerable.Repeat(true, ids.Length).ToArray());

    [Fact]
    public void Training_every_weight_learns_the_sequences_and_the_saved_checkpoint_serves_the_same_logits()
    {
        using var model = FullParameters.CreateRandom(Tiny, seed: 3);
        using var trainable = new FullParameters(model);
        // every weight is trainable: embeddings (tied lm_head), 4 projection groups and 2 norms per layer, the final norm
        Assert.Equal(1 + 2 * 6 + 1, trainable.Parameters.Count);
        Assert.Equal(SyntheticLlama.ParameterCount(Tiny), trainable.Count);

        var rows = new List<IReadOnlyList<TokenizedExample>>
        {
            new[] { Example(1, 1, 5, 9, 13, 17, 21, 25, 29), Example(2, 2, 40, 41, 42, 43) },
            new[] { Example(3, 3, 7, 11, 15, 19, 23, 27, 31, 35, 39) },
        };
        using var trainer = new Trainer(model, trainable, new TrainingOptions { BatchSize = 2, LearningRate = 1e-2 });
        double first = 0, last = 0;
        for (int step = 0; step < 60; step++)
        {
            using var batch = TrainingBatch.Packed(rows, model.Device);
            var r = trainer.Step([batch], 1e-2);
            if (step == 0) first = r.Loss;
            last = r.Loss;
        }
        Assert.True(last < first / 10, $"loss {first:F3} → {last:F3}");

        string dir = TestTensors.TempDir();
        FullParameters.SaveHuggingFace(model, dir, bosTokenId: 1, eosTokenIds: [2, 3]);
        using var reloaded = LlamaModel.Load(dir);
        Assert.Equal([2, 3], reloaded.Config.EosTokenIds);
        Assert.True(reloaded.Config.TieWordEmbeddings);
        using var ids = torch.tensor(new long[] { 1, 5, 9, 13, 17 }).unsqueeze(0);
        using var expected = model.Forward(ids);
        using var actual = reloaded.Forward(ids);
        Assert.True(TestSupport.MaxAbsDiff(TestSupport.Floats(expected), TestSupport.Floats(actual)) < 1e-5);
        // greedy continuation of a training sequence follows it
        using var next = actual[0, -1].argmax();
        Assert.Equal(21, next.item<long>());
    }
}
