using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Runner;
using SmoaServe.Tests;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Tests;

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

    /// <summary>
    /// Every row of the step on SMoA adapters of one layout (one anchored bank for all rows: on a float32 CPU model the
    /// SMoA bank's decode loop instead of the batched GEMM form), each at its own position.
    /// </summary>
    [Fact]
    public void DecodeStepWithEveryRowOnOneSmoaBankMatchesEachRowsReference()
    {
        var model = TestModels.LlamaA;
        using var registry = new AdapterRegistry(BaseModelView.From(model), options: new AdapterRegistryOptions { SmoaForm = SmoaForm.Anchored });
        registry.Load("smoa-adapter", TestModels.AdapterDir("smoa-adapter"));
        using var runner = new ModelRunner(model, slotCount: 4, maxSequenceLength: 64, registry);
        var (ids, logits) = TestModels.Expected(Path.Combine(TestModels.AdapterDir("smoa-adapter"), "expected_logits.safetensors"))[1];
        int[] lengths = [33, 7, 20, 2];
        var decode = new List<DecodeRow>();
        for (int slot = 0; slot < lengths.Length; slot++)
        {
            runner.Prefill(slot, ids[..(lengths[slot] - 1)].Select(i => (int)i).ToArray(), 0, "smoa-adapter");
            decode.Add(new DecodeRow(slot, (int)ids[lengths[slot] - 1], lengths[slot] - 1, "smoa-adapter"));
        }
        for (int step = 0; step < 2; step++)   // the second step reuses the batch plan (cached factors)
        {
            var result = runner.Decode(decode);
            for (int i = 0; i < lengths.Length; i++)
            {
                using var got = tensor(result[i]);
                double diff = TestModels.MaxAbsDiff(got, logits[lengths[i] - 1]);
                Assert.True(diff <= TestModels.AdapterTolerance, $"step {step} row {i} (position {lengths[i] - 1}): max |Δ| = {diff:g3}");
            }
            if (step == 0)
                for (int i = 0; i < lengths.Length; i++)
                {
                    runner.FreeSlot(i);
                    runner.Prefill(i, ids[..(lengths[i] - 1)].Select(t => (int)t).ToArray(), 0, "smoa-adapter");
                }
        }
    }

    /// <summary>
    /// Prefill chunks of five sequences (different adapters, lengths and start positions, a second chunk after a first)
    /// in one batched forward give each row the reference logits of its last prompt token, and leave KV caches from which
    /// one batched decode step reproduces the reference logits of the next token.
    /// </summary>
    [Theory]
    [InlineData(SmoaForm.Anchored)]
    [InlineData(SmoaForm.Folded)]
    public void BatchedPrefillMatchesEachRowsReference(SmoaForm form)
    {
        var model = TestModels.LlamaA;
        using var registry = new AdapterRegistry(BaseModelView.From(model), options: new AdapterRegistryOptions { SmoaForm = form });
        foreach (var a in TestModels.FixtureAdapters) registry.Load(a, TestModels.AdapterDir(a));
        using var runner = new ModelRunner(model, slotCount: 6, maxSequenceLength: 64, registry);

        // (adapter or base, reference file, prompt length; the first half of rows 3 and 4 is prefilled beforehand)
        var rows = new (string? Adapter, string File, int Length)[]
        {
            ("smoa-adapter", Path.Combine(TestModels.AdapterDir("smoa-adapter"), "expected_logits.safetensors"), 30),
            ("lora-adapter", Path.Combine(TestModels.AdapterDir("lora-adapter"), "expected_logits.safetensors"), 7),
            (null, Path.Combine(FixturePaths.LlamaA, "expected_base.safetensors"), 21),
            ("smoa-adapter-layout", Path.Combine(TestModels.AdapterDir("smoa-adapter-layout"), "expected_logits.safetensors"), 32),
            ("smoa-adapter", Path.Combine(TestModels.AdapterDir("smoa-adapter"), "expected_logits.safetensors"), 12),
        };
        var prefill = new List<PrefillRow>();
        var references = new List<(long[] Ids, Tensor Logits)>();
        for (int slot = 0; slot < rows.Length; slot++)
        {
            var (adapter, file, length) = rows[slot];
            var (ids, logits) = TestModels.Expected(file)[1];                 // the 33-token sequence
            references.Add((ids, logits));
            var prompt = ids[..length].Select(i => (int)i).ToArray();
            int start = slot >= 3 ? length / 2 : 0;
            if (start > 0) runner.Prefill(slot, prompt.AsSpan(0, start), 0, adapter);
            prefill.Add(new PrefillRow(slot, prompt[start..], start, adapter));
        }

        var first = runner.PrefillBatch(prefill);
        var decode = new List<DecodeRow>();
        for (int i = 0; i < rows.Length; i++)
        {
            int last = rows[i].Length - 1;
            Assert.Equal(rows[i].Length, runner.SlotLength(i));
            AssertClose(first[i], references[i].Logits[last], rows[i].Adapter, $"prefill row {i}, position {last}");
            decode.Add(new DecodeRow(i, (int)references[i].Ids[last + 1], last + 1, rows[i].Adapter));
        }
        var next = runner.Decode(decode);
        for (int i = 0; i < rows.Length; i++)
            AssertClose(next[i], references[i].Logits[rows[i].Length], rows[i].Adapter, $"decode row {i}, position {rows[i].Length}");
    }

    private static void AssertClose(float[] got, Tensor expected, string? adapter, string what)
    {
        using var g = tensor(got);
        double diff = TestModels.MaxAbsDiff(g, expected);
        double tolerance = adapter is null ? 1e-3 : TestModels.AdapterTolerance;
        Assert.True(diff <= tolerance, $"{what} ({adapter ?? "base"}): max |Δ| = {diff:g3}");
    }
}
