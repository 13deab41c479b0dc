using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Adapters.Smoa;
using SmoaServe.Engine.Model;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Tests;

/// <summary>
/// The batched on-the-fly update equals x·(W + ΔW)ᵀ with ΔW built here, element by element, from the spec formula:
/// ΔW[R_k[i], C_k[j]] = scale · Σ_t B_k[i, t]·A_k[t, j] · W[R_k[i], C_k[j]] (SMoA), ΔW = scale · B A (LoRA).
/// </summary>
public class DenseReferenceTests
{
    /// <summary>ΔW [m, n] from the spec, by loops over plain arrays (independent of the code under test).</summary>
    private static float[,] SpecDelta(float[,] w, SmoaLayout layout, ModuleFactors f, double scale)
    {
        var d = new float[w.GetLength(0), w.GetLength(1)];
        for (int k = 0; k < layout.K; k++)
        {
            if (f.A[k] is null) continue;
            var a = ToArray(f.A[k]!); var b = ToArray(f.B[k]!);
            for (int i = 0; i < layout.Rows[k].Length; i++)
                for (int j = 0; j < layout.Cols[k].Length; j++)
                {
                    double ba = 0;
                    for (int t = 0; t < a.GetLength(0); t++) ba += b[i, t] * a[t, j];
                    long r = layout.Rows[k][i], c = layout.Cols[k][j];
                    d[r, c] = (float)(scale * ba * w[r, c]);
                }
        }
        return d;
    }

    private static float[,] LoraDelta(ModuleFactors f, double scale)
    {
        var a = ToArray(f.A[0]!); var b = ToArray(f.B[0]!);
        var d = new float[b.GetLength(0), a.GetLength(1)];
        for (int i = 0; i < d.GetLength(0); i++)
            for (int j = 0; j < d.GetLength(1); j++)
            {
                double s = 0;
                for (int t = 0; t < a.GetLength(0); t++) s += b[i, t] * a[t, j];
                d[i, j] = (float)(scale * s);
            }
        return d;
    }

    private static float[,] ToArray(Tensor t)
    {
        var data = t.to(ScalarType.Float32).cpu().data<float>().ToArray();
        var result = new float[t.shape[0], t.shape[1]];
        Buffer.BlockCopy(data, 0, result, 0, data.Length * sizeof(float));
        return result;
    }

    private static Tensor FromArray(float[,] a) => tensor(a.Cast<float>().ToArray(), [a.GetLength(0), a.GetLength(1)]);

    /// <summary>
    /// Applies the registry's batch for one adapter to the fused GEMM output of p's projection group and compares p's
    /// columns with x (W + ΔW)ᵀ, with one token per row (the decode form: shared-anchor GEMM, or the folded GEMM with the
    /// whole group weight) and with 6 tokens per row (the prefill form: transient blocks or transient ΔW).
    /// </summary>
    private static void AssertModuleMatches(AdapterRegistry registry, string name, int layer, Projection p, float[,] delta)
    {
        var model = TestModels.LlamaA;
        var w = model.ProjectionWeight(layer, p);
        var (group, part) = ProjectionGroups.Of(p);
        var groupWeight = model.GroupWeight(layer, group);
        long offset = ProjectionGroups.Parts(group).Take(part).Sum(q => model.ProjectionWeight(layer, q).shape[0]);
        using var d = FromArray(delta);
        foreach (int tokens in new[] { 1, 6 })
        {
            using var gen = new Generator(7);
            using var x = randn([3, tokens, w.shape[1]], generator: gen);            // [B, T, in]
            var batch = registry.CreateBatch([name, name, name])!;
            using var y0 = nn.functional.linear(x, groupWeight);                     // [B, T, Σout]
            using var y = batch.Apply(layer, group, x, y0);
            using var expected = nn.functional.linear(x, w + d);
            double diff = TestModels.MaxAbsDiff(y.narrow(-1, offset, w.shape[0]), expected);
            Assert.True(diff < 1e-4, $"{name} layer {layer} {p}, T = {tokens}, {registry.Options.SmoaForm}: max |Δ| = {diff:g3}");
        }
    }

    [Theory]
    [InlineData(1, 8, null, SmoaForm.Anchored)]          // K = 1: HiRA, ΔW = (α/r)(B A) ⊙ W
    [InlineData(3, 7, "4,0,3", SmoaForm.Anchored)]       // uneven branch_ranks with an empty block
    [InlineData(2, 8, null, SmoaForm.Anchored)]
    [InlineData(1, 8, null, SmoaForm.Folded)]
    [InlineData(3, 7, "4,0,3", SmoaForm.Folded)]
    [InlineData(2, 8, null, SmoaForm.Folded)]
    public void SmoaMatchesSpecFormula(int k, int r, string? branchRanks, SmoaForm form)
    {
        var view = BaseModelView.From(TestModels.LlamaA);
        int[]? ranks = branchRanks?.Split(',').Select(int.Parse).ToArray();
        var config = AdapterConfig.Smoa(r, k, 12.0, [Projection.Q, Projection.Down, Projection.V], ranks);
        // Stored random layouts: the formula, not the SVD, is under test here (the SVD layout is checked by the fixtures).
        using var adapter = RandomAdapters.Smoa(view, config, seed: 11, (l, p) => { var (m, n) = view.Shape(l, p); return RandomAdapters.RandomLayout(m, n, k, 100 * l + (int)p); });
        using var registry = new AdapterRegistry(view, options: new AdapterRegistryOptions { SmoaForm = form });
        registry.Add("s", adapter);
        Assert.Equal(0, registry.Layouts.SvdCount);
        foreach (var ((layer, p), f) in adapter.Modules)
            AssertModuleMatches(registry, "s", layer, p, SpecDelta(ToArray(TestModels.LlamaA.ProjectionWeight(layer, p)), f.CarriedLayout!, f, 12.0 / r));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void LoraMatchesSpecFormula(bool rslora)
    {
        var view = BaseModelView.From(TestModels.LlamaA);
        var config = AdapterConfig.Lora(9, 6.0, [Projection.K, Projection.Up], rslora);
        Assert.Equal(rslora ? 6.0 / 3.0 : 6.0 / 9.0, config.Scaling, 12);
        using var adapter = RandomAdapters.Lora(view, config, seed: 5);
        using var registry = new AdapterRegistry(view);
        registry.Add("l", adapter);
        foreach (var ((layer, p), f) in adapter.Modules)
            AssertModuleMatches(registry, "l", layer, p, LoraDelta(f, config.Scaling));
    }

    [Fact]
    public void RsloraFlagIsReadFromTheConfig()
    {
        var c = AdapterConfig.Parse("""{"peft_type": "LORA", "r": 16, "lora_alpha": 8, "use_rslora": true, "target_modules": ["q_proj"]}""", "test");
        Assert.Equal(8.0 / 4.0, c.Scaling, 12);
        var hira = AdapterConfig.Parse("""{"peft_type": "SMOA", "r": 16, "num_blocks": 1, "lora_alpha": 8, "target_modules": ["q_proj"]}""", "test");
        Assert.Equal(8.0 / 16.0, hira.Scaling, 12);
        Assert.Equal([16], hira.BlockRanks);
        var uneven = AdapterConfig.Parse("""{"peft_type": "SMOA", "r": 7, "num_blocks": 3, "lora_alpha": 8, "target_modules": ["q_proj"]}""", "test");
        Assert.Equal([3, 2, 2], uneven.BlockRanks);
    }

    [Fact]
    public void TargetModulesMayBeARegexOrAllLinear()
    {
        var all = AdapterConfig.Parse("""{"peft_type": "LORA", "r": 4, "target_modules": "all-linear"}""", "test");
        Assert.Equal(7, all.TargetModules.Count);
        var some = AdapterConfig.Parse("""{"peft_type": "LORA", "r": 4, "target_modules": ".*\\.(q_proj|v_proj)"}""", "test");
        Assert.Equal([Projection.Q, Projection.V], some.TargetModules);
        Assert.Throws<InvalidDataException>(() => AdapterConfig.Parse("""{"peft_type": "LORA", "r": 4, "target_modules": "lm_head"}""", "test"));
        Assert.Throws<InvalidDataException>(() => AdapterConfig.Parse("""{"peft_type": "LORA", "r": 4, "target_modules": ["embed_tokens"]}""", "test"));
    }

    [Fact]
    public void DenseDeltaMatchesSpecFormula()
    {
        // The merge path (SmoaMath.DenseDelta) against the same element-wise formula, with the SVD layout.
        var view = BaseModelView.From(TestModels.LlamaA);
        var config = AdapterConfig.Smoa(5, 2, 10.0, [Projection.Gate]);
        using var adapter = RandomAdapters.Smoa(view, config, seed: 3);
        var layouts = new LayoutStore(view);
        var w = TestModels.LlamaA.ProjectionWeight(1, Projection.Gate);
        using var delta = AdapterMerge.DeltaWeight(adapter, 1, Projection.Gate, w, layouts);
        using var expected = FromArray(SpecDelta(ToArray(w), layouts.Get(1, Projection.Gate, 2), adapter.Modules[(1, Projection.Gate)], 2.0));
        Assert.True(TestModels.MaxAbsDiff(delta, expected) < 1e-5);
    }
}
