using SmoaServe.Engine.Adapters;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Tests;

/// <summary>Scoring the fixture sequences with each reference adapter reproduces its expected_logits.safetensors.</summary>
public class FixtureScoreTests
{
    [Theory]
    [InlineData("smoa-adapter", SmoaForm.Anchored)]
    [InlineData("smoa-adapter-layout", SmoaForm.Anchored)]
    [InlineData("lora-adapter", SmoaForm.Anchored)]
    [InlineData("smoa-adapter", SmoaForm.Folded)]
    [InlineData("smoa-adapter-layout", SmoaForm.Folded)]
    public void ScoreWithAdapterMatchesReference(string adapter, SmoaForm form)
    {
        var model = TestModels.LlamaA;
        using var registry = new AdapterRegistry(BaseModelView.From(model), options: new AdapterRegistryOptions { SmoaForm = form });
        registry.Load(adapter, TestModels.AdapterDir(adapter));
        var batch = registry.CreateBatch([adapter]);
        Assert.NotNull(batch);
        foreach (var (ids, expected) in TestModels.Expected(Path.Combine(TestModels.AdapterDir(adapter), "expected_logits.safetensors")))
        {
            using var logits = TestModels.Score(model, ids, batch);
            double diff = TestModels.MaxAbsDiff(logits, expected);
            Assert.True(diff <= TestModels.AdapterTolerance, $"{adapter}, T={ids.Length}: max |Δlogit| = {diff:g4} > {TestModels.AdapterTolerance}");
            expected.Dispose();
        }
    }

    [Fact]
    public void AdapterChangesTheLogits()
    {
        // Guards against a silently ignored adapter: the reference adapters move the logits well beyond the tolerance.
        var model = TestModels.LlamaA;
        using var registry = new AdapterRegistry(BaseModelView.From(model));
        registry.Load("s", TestModels.AdapterDir("smoa-adapter"));
        var (ids, expected) = TestModels.Expected(Path.Combine(TestModels.AdapterDir("smoa-adapter"), "expected_logits.safetensors"))[0];
        using var baseLogits = TestModels.Score(model, ids, null);
        Assert.True(TestModels.MaxAbsDiff(baseLogits, expected) > 10 * TestModels.AdapterTolerance);
    }
}

/// <summary>The adapter path in bfloat16 (the CUDA default): factors and anchors follow the model's dtype.</summary>
public class Bfloat16Tests
{
    [Theory]
    [InlineData(SmoaForm.Anchored)]
    [InlineData(SmoaForm.Folded)]
    public void AdaptersRunInBfloat16(SmoaForm form)
    {
        using var model = SmoaServe.Engine.Model.LlamaModel.Load(SmoaServe.Tests.FixturePaths.LlamaA,
            new SmoaServe.Engine.Model.ModelLoadOptions(TorchSharp.torch.CPU, TorchSharp.torch.ScalarType.BFloat16));
        using var registry = new AdapterRegistry(BaseModelView.From(model), options: new AdapterRegistryOptions { SmoaForm = form });
        foreach (var a in TestModels.FixtureAdapters) registry.Load(a, TestModels.AdapterDir(a));
        var (baseIds, baseExpected) = TestModels.Expected(Path.Combine(SmoaServe.Tests.FixturePaths.LlamaA, "expected_base.safetensors"))[1];
        using var baseLogits = TestModels.Score(model, baseIds, null);
        double baseError = TestModels.MaxAbsDiff(baseLogits, baseExpected);   // what bf16 alone costs on this sequence
        foreach (var a in TestModels.FixtureAdapters)
        {
            var (ids, expected) = TestModels.Expected(Path.Combine(TestModels.AdapterDir(a), "expected_logits.safetensors"))[1];
            using var withAdapter = TestModels.Score(model, ids, registry.CreateBatch([a]));
            using var without = TestModels.Score(model, ids, null);
            double adapted = TestModels.MaxAbsDiff(withAdapter, expected), plain = TestModels.MaxAbsDiff(without, expected);
            // bf16 rounding (8 bits of mantissa) makes ~1e-1 errors normal on these logits; the adapter must still be
            // applied: far closer to the adapter's reference than the base is.
            Assert.True(adapted < 2 * baseError + 0.05 && adapted < plain / 2, $"{a}: bf16 with adapter max |Δ| = {adapted:g3}, without = {plain:g3}, bf16 base alone {baseError:g3}");
        }
    }
}
