using SmoaServe.Engine.Model;
using SmoaServe.Engine.Adapters;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Tests;

/// <summary>A batch whose rows use different adapters (or none) gives every row the logits it gets alone.</summary>
public class MixedBatchTests
{
    [Theory]
    [InlineData(SmoaForm.Anchored, 1L << 27)]
    [InlineData(SmoaForm.Folded, 1L << 27)]
    [InlineData(SmoaForm.Folded, 1L)]           // folded prefill one row at a time
    public void EachRowGetsItsOwnAdapter(SmoaForm form, long foldedPrefillMaxElements)
    {
        var model = TestModels.LlamaA;
        using var registry = new AdapterRegistry(BaseModelView.From(model),
            options: new AdapterRegistryOptions { SmoaForm = form, FoldedPrefillMaxElements = foldedPrefillMaxElements });
        foreach (var a in TestModels.FixtureAdapters) registry.Load(a, TestModels.AdapterDir(a));
        string?[] rows = ["smoa-adapter", "lora-adapter", null, "smoa-adapter-layout", "smoa-adapter", null];

        var ids = TestModels.Expected(Path.Combine(TestModels.AdapterDir("lora-adapter"), "expected_logits.safetensors"))[1].Ids;  // T = 33
        var batchIds = new long[rows.Length * ids.Length];
        for (int r = 0; r < rows.Length; r++)
            for (int t = 0; t < ids.Length; t++) batchIds[r * ids.Length + t] = ids[(t + 5 * r) % ids.Length];   // different text per row

        using var input = tensor(batchIds, [rows.Length, ids.Length]);
        using var mixed = model.Forward(input, registry.CreateBatch(rows));
        for (int r = 0; r < rows.Length; r++)
        {
            var rowIds = batchIds[(r * ids.Length)..((r + 1) * ids.Length)];
            using var alone = TestModels.Score(model, rowIds, rows[r] is null ? null : registry.CreateBatch([rows[r]]));
            double diff = TestModels.MaxAbsDiff(mixed[r], alone);
            Assert.True(diff < 1e-4, $"row {r} ({rows[r] ?? "base"}): max |Δ| = {diff:g3}");
        }
    }

    [Fact]
    public void BaseOnlyBatchHasNoAdapters()
    {
        using var registry = new AdapterRegistry(BaseModelView.From(TestModels.LlamaA));
        registry.Load("a", TestModels.AdapterDir("lora-adapter"));
        Assert.Null(registry.CreateBatch([null, null, null]));
    }

    [Fact]
    public void RemovedAdapterSlotIsReused()
    {
        var model = TestModels.LlamaA;
        using var registry = new AdapterRegistry(BaseModelView.From(model));
        registry.Load("a", TestModels.AdapterDir("smoa-adapter"));
        registry.Load("b", TestModels.AdapterDir("lora-adapter"));
        Assert.True(registry.Remove("a"));
        Assert.False(registry.Remove("a"));
        Assert.Throws<InvalidOperationException>(() => registry.CreateBatch(["a"]));
        registry.Load("c", TestModels.AdapterDir("smoa-adapter"));  // takes a's slots
        var (ids, expected) = TestModels.Expected(Path.Combine(TestModels.AdapterDir("smoa-adapter"), "expected_logits.safetensors"))[0];
        using var logits = TestModels.Score(model, ids, registry.CreateBatch(["c"]));
        Assert.True(TestModels.MaxAbsDiff(logits, expected) <= TestModels.AdapterTolerance);
    }
}

public class ReplaceTests
{
    [Fact]
    public void ReplaceIsAtomic()
    {
        var model = TestModels.LlamaA;
        using var registry = new AdapterRegistry(BaseModelView.From(model));
        registry.Load("x", TestModels.AdapterDir("lora-adapter"));
        // a failing replacement leaves the old adapter serving
        string bad = TestModels.TempDir();
        File.WriteAllText(Path.Combine(bad, AdapterFiles.ConfigFile), "{}");
        Assert.ThrowsAny<Exception>(() => registry.Load("x", bad, replace: true));
        Assert.Equal(AdapterKind.Lora, registry.Get("x")!.Kind);
        // a good one takes over
        registry.Load("x", TestModels.AdapterDir("smoa-adapter"), replace: true);
        Assert.Equal(AdapterKind.Smoa, registry.Get("x")!.Kind);
        var (ids, expected) = TestModels.Expected(Path.Combine(TestModels.AdapterDir("smoa-adapter"), "expected_logits.safetensors"))[0];
        using var logits = TestModels.Score(model, ids, registry.CreateBatch(["x"]));
        Assert.True(TestModels.MaxAbsDiff(logits, expected) <= TestModels.AdapterTolerance);
        Directory.Delete(bad, true);
    }
}

public class BankGroupingTests
{
    [Theory]
    [InlineData(SmoaForm.Anchored)]
    [InlineData(SmoaForm.Folded)]
    public void SameModuleDifferentBanksInOneBatch(SmoaForm form)
    {
        // Four adapters on the same modules that land in four different banks: r 4 vs r 8 (rank padding), K 2 vs K 3
        // (anchors), and a stored layout that differs from the SVD one (its own anchors); plus LoRA and base rows.
        var model = TestModels.LlamaA;
        var view = BaseModelView.From(model);
        using var registry = new AdapterRegistry(view, options: new AdapterRegistryOptions { SmoaForm = form });
        Projection[] targets = [Projection.Q, Projection.Up];
        using var a = RandomAdapters.Smoa(view, AdapterConfig.Smoa(4, 2, 8, targets), 1);
        using var b = RandomAdapters.Smoa(view, AdapterConfig.Smoa(8, 2, 8, targets), 2);
        using var c = RandomAdapters.Smoa(view, AdapterConfig.Smoa(6, 3, 8, targets), 3);
        using var d = RandomAdapters.Smoa(view, AdapterConfig.Smoa(4, 2, 8, targets), 4, (l, p) => { var (m, n) = view.Shape(l, p); return RandomAdapters.RandomLayout(m, n, 2, 10 * l + (int)p); });
        using var e = RandomAdapters.Lora(view, AdapterConfig.Lora(3, 6, targets), 5);
        registry.Add("a", a); registry.Add("b", b); registry.Add("c", c); registry.Add("d", d); registry.Add("e", e);
        string?[] rows = ["a", "b", null, "c", "d", "e", "a", "d"];

        var ids = TestModels.Expected(Path.Combine(TestModels.AdapterDir("lora-adapter"), "expected_logits.safetensors"))[0].Ids;  // T = 7
        foreach (int tokens in new[] { 1, ids.Length })   // decode form and prefill form
        {
            var batchIds = Enumerable.Range(0, rows.Length).SelectMany(r => ids.Take(tokens).Select((t, i) => ids[(i + r) % ids.Length])).ToArray();
            using var input = TorchSharp.torch.tensor(batchIds, [rows.Length, tokens]);
            var batch = registry.CreateBatch(rows);
            using var mixed = model.Forward(input, batch);
            using var again = model.Forward(input, registry.CreateBatch(rows));    // second use of the plan: cached factors
            for (int r = 0; r < rows.Length; r++)
            {
                using var alone = TestModels.Score(model, batchIds[(r * tokens)..((r + 1) * tokens)], rows[r] is null ? null : registry.CreateBatch([rows[r]]));
                Assert.True(TestModels.MaxAbsDiff(mixed[r], alone) < 1e-4, $"T={tokens} row {r} ({rows[r] ?? "base"})");
                Assert.True(TestModels.MaxAbsDiff(again[r], alone) < 1e-4, $"T={tokens} row {r} ({rows[r] ?? "base"}), cached plan");
            }
        }
    }

    [Fact]
    public void RemoveFromAnotherThreadWhileServing()
    {
        var model = TestModels.LlamaA;
        using var registry = new AdapterRegistry(BaseModelView.From(model));
        registry.Load("keep", TestModels.AdapterDir("smoa-adapter"));
        var (ids, expected) = TestModels.Expected(Path.Combine(TestModels.AdapterDir("smoa-adapter"), "expected_logits.safetensors"))[0];
        using var stop = new CancellationTokenSource();
        using var started = new ManualResetEventSlim();
        var other = new Thread(() =>
        {
            started.Set();
            while (!stop.IsCancellationRequested) { registry.Remove("churn"); registry.Contains("keep"); registry.List(); }
        });
        other.Start();
        Assert.True(started.Wait(TimeSpan.FromSeconds(10)));
        for (int i = 0; i < 20; i++)
        {
            registry.Load("churn", TestModels.AdapterDir(i % 2 == 0 ? "lora-adapter" : "smoa-adapter-layout"), replace: true);
            using var logits = TestModels.Score(model, ids, registry.CreateBatch(["keep"]));
            Assert.True(TestModels.MaxAbsDiff(logits, expected) <= TestModels.AdapterTolerance);
        }
        stop.Cancel();
        other.Join();
    }
}
