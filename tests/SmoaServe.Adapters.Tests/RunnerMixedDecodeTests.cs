using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Runner;
using SmoaServe.Tests;
using static TorchSharp.torch;

namespace SmoaServe.Adapters.Tests;

/// <summary>
/// Through the model runner (KV cache, chunked prefill, batched decode): rows on different SMoA and LoRA adapters and
/// on none, each at its own position, decoded in one step, reproduce the reference logits of their own adapter.
/// </summary>
public class RunnerMixedDecodeTests
{
    [Theory]
    [InlineData(SmoaForm.Anchored)]
    [InlineData(SmoaForm.Folded)]
    public void MixedDecodeStepMatchesEachRowsReference(SmoaForm form)
    {
        var model = TestModels.LlamaA;
        using var registry = new AdapterRegistry(BaseModelView.From(model), options: new AdapterRegistryOptions { SmoaForm = form });
        foreach (var a in TestModels.FixtureAdapters) registry.Load(a, TestModels.AdapterDir(a));
        using var runner = new ModelRunner(model, slotCount: 6, maxSequenceLength: 64, registry);

        // (adapter or base, reference file, prefix length = position of the decoded token + 1)
        var rows = new (string? Adapter, string File, int Length)[]
        {
            ("smoa-adapter", Path.Combine(TestModels.AdapterDir("smoa-adapter"), "expected_logits.safetensors"), 30),
            ("lora-adapter", Path.Combine(TestModels.AdapterDir("lora-adapter"), "expected_logits.safetensors"), 12),
            (null, Path.Combine(FixturePaths.LlamaA, "expected_base.safetensors"), 21),
            ("smoa-adapter-layout", Path.Combine(TestModels.AdapterDir("smoa-adapter-layout"), "expected_logits.safetensors"), 33),
            ("smoa-adapter", Path.Combine(TestModels.AdapterDir("smoa-adapter"), "expected_logits.safetensors"), 5),
        };
        var decode = new List<DecodeRow>();
        var expected = new List<Tensor>();
        for (int slot = 0; slot < rows.Length; slot++)
        {
            var (adapter, file, length) = rows[slot];
            var (ids, logits) = TestModels.Expected(file)[1];                 // the 33-token sequence
            var prompt = ids[..(length - 1)].Select(i => (int)i).ToArray();
            int half = prompt.Length / 2;                                     // chunked prefill: two calls
            runner.Prefill(slot, prompt.AsSpan(0, half == 0 ? prompt.Length : half), 0, adapter);
            if (half > 0) runner.Prefill(slot, prompt.AsSpan(half), half, adapter);
            decode.Add(new DecodeRow(slot, (int)ids[length - 1], length - 1, adapter));
            expected.Add(logits[length - 1].clone());
        }

        var result = runner.Decode(decode);
        for (int i = 0; i < rows.Length; i++)
        {
            using var got = tensor(result[i]);
            double diff = TestModels.MaxAbsDiff(got, expected[i]);
            double tolerance = rows[i].Adapter is null ? 1e-3 : TestModels.AdapterTolerance;
            Assert.True(diff <= tolerance, $"row {i} ({rows[i].Adapter ?? "base"}, position {rows[i].Length - 1}): max |Δ| = {diff:g3}");
        }
    }
}
