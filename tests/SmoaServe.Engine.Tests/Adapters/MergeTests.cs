using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Model;
using SmoaServe.Tests;

namespace SmoaServe.Engine.Tests;

/// <summary>`smoa merge` output, scored without an adapter, equals the base scored with the adapter.</summary>
public class MergeTests
{
    [Theory]
    [InlineData("smoa-adapter")]
    [InlineData("smoa-adapter-layout")]
    [InlineData("lora-adapter")]
    public void MergedCheckpointScoresLikeTheAdapter(string adapter)
    {
        string outDir = TestModels.TempDir();
        int merged = AdapterMerge.MergeCheckpoint(FixturePaths.LlamaA, TestModels.AdapterDir(adapter), outDir);
        Assert.True(merged > 0);
        Assert.True(File.Exists(Path.Combine(outDir, "config.json")));
        Assert.True(File.Exists(Path.Combine(outDir, "tokenizer.json")));
        Assert.False(File.Exists(Path.Combine(outDir, "expected_base.safetensors")));

        using var mergedModel = LlamaModel.Load(outDir);
        foreach (var (ids, expected) in TestModels.Expected(Path.Combine(TestModels.AdapterDir(adapter), "expected_logits.safetensors")))
        {
            using var logits = TestModels.Score(mergedModel, ids, null);
            double diff = TestModels.MaxAbsDiff(logits, expected);
            Assert.True(diff <= TestModels.AdapterTolerance, $"merged {adapter}, T={ids.Length}: max |Δ| = {diff:g3}");
        }
        Directory.Delete(outDir, true);
    }

    [Fact]
    public void MergeRefusesToOverwriteTheBase()
    {
        Assert.Throws<ArgumentException>(() => AdapterMerge.MergeCheckpoint(FixturePaths.LlamaA, TestModels.AdapterDir("lora-adapter"), FixturePaths.LlamaA));
    }

    [Fact]
    public void MergeInPlaceThenUnmergeRestoresTheWeights()
    {
        using var model = LlamaModel.Load(FixturePaths.LlamaA);
        var view = BaseModelView.From(model);
        using var adapter = AdapterFiles.Read(TestModels.AdapterDir("smoa-adapter"), view);
        using var before = model.ProjectionWeight(1, Projection.Down).clone();
        var merged = AdapterMerge.MergeInPlace(adapter, model.ProjectionWeight, new Engine.Adapters.Smoa.LayoutStore(view));
        Assert.True(TestModels.MaxAbsDiff(before, model.ProjectionWeight(1, Projection.Down)) > 1e-4);
        AdapterMerge.Unmerge(merged);
        Assert.True(TestModels.MaxAbsDiff(before, model.ProjectionWeight(1, Projection.Down)) < 1e-6);
    }
}
