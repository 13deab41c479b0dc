using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Adapters.Smoa;
using SmoaServe.Engine.Checkpoints;
using SmoaServe.Engine.Model;
using SmoaServe.Training.Adapters;
using SmoaServe.Training.Data;
using TorchSharp;
using static SmoaServe.Training.Tests.TestSupport;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace SmoaServe.Training.Tests;

/// <summary>The training hook against the spec's dense ΔW, and trained adapters against the serving path.</summary>
public sealed class AdapterTrainingTests
{
    /// <summary>
    /// The hook's output and gradients for one projection group equal those of y + x ΔWᵀ with ΔW built densely by the
    /// spec (SmoaMath.DenseDelta) from the same factors: HiRA (K = 1) and K = 3 with uneven ranks (2, 2, 1), on a part
    /// that is not first in its fused group; both training forms.
    /// </summary>
    [Theory]
    [InlineData(4, 1, Projection.Up, SmoaTrainingForm.Auto)]
    [InlineData(4, 1, Projection.Up, SmoaTrainingForm.Blockwise)]
    [InlineData(5, 3, Projection.K, SmoaTrainingForm.Auto)]
    [InlineData(5, 3, Projection.Down, SmoaTrainingForm.Blockwise)]
    [InlineData(5, 3, Projection.Down, SmoaTrainingForm.Folded)]
    public void Smoa_hook_matches_the_dense_update(int r, int k, Projection target, SmoaTrainingForm form)
    {
        var config = AdapterConfig.Smoa(r, k, 7, [target]);
        using var adapter = BatchTests.RandomAdapter(config);
        adapter.Form = form;
        var (group, part) = ProjectionGroups.Of(target);
        var weight = Model.GroupWeight(0, group);
        long offset = ProjectionGroups.Parts(group).Take(part).Sum(p => Model.ProjectionWeight(0, p).shape[0]);
        long outF = Model.ProjectionWeight(0, target).shape[0];
        using var scope = NewDisposeScope();
        using var grad = enable_grad();
        using var generator = new Generator(9);
        var x = randn([2, 5, weight.shape[1]], generator: generator);
        var upstream = randn([2, 5, weight.shape[0]], generator: generator);

        var hooked = adapter.CreateHook().Apply(0, group, x, F.linear(x, weight));
        (hooked * upstream).sum().backward();
        string layer0 = "layers.0.";   // the random adapter has every layer; this forward only reaches layer 0's group
        var gradients = adapter.Factors(gradients: true).Where(f => f.Key.Contains(layer0)).ToList();

        var a = new Tensor?[k];
        var b = new Tensor?[k];
        var values = adapter.Factors().Where(f => f.Key.Contains(layer0)).ToList();
        for (int blk = 0, i = 0; blk < k; blk++)
        {
            if (config.BlockRanks[blk] == 0) continue;
            a[blk] = values[i++].Value!.detach().clone().requires_grad_(true);
            b[blk] = values[i++].Value!.detach().clone().requires_grad_(true);
        }
        var layout = new LayoutStore(BaseModelView.From(Model)).Get(0, target, k);
        var delta = SmoaMath.DenseDelta(Model.ProjectionWeight(0, target), layout, a, b, config.Scaling);   // [out, in]
        var expected = F.linear(x, weight).clone();
        expected.narrow(-1, offset, outF).add_(F.linear(x, delta));
        (expected * upstream).sum().backward();

        Assert.True(MaxAbsDiff(Floats(expected), Floats(hooked)) <= 1e-5 * (1 + MaxAbs(Floats(expected))));
        var reference = Enumerable.Range(0, k).Where(blk => config.BlockRanks[blk] > 0).SelectMany(blk => new[] { a[blk]!.grad!, b[blk]!.grad! }).ToList();
        Assert.Equal(reference.Count, gradients.Count);
        for (int i = 0; i < reference.Count; i++)
        {
            var want = Floats(reference[i]);
            Assert.True(MaxAbsDiff(want, Floats(gradients[i].Value!)) <= 1e-5 * (1 + MaxAbs(want)), gradients[i].Key);
        }
    }

    /// <summary>
    /// After a few steps, the adapter written to disk reads back through AdapterFiles.Read (SMoA with its layout tensors)
    /// and the serving path (both SMoA forms) computes the logits the in-memory trained adapter computes. Writing again
    /// replaces the directory whole and leaves nothing else behind.
    /// </summary>
    [Theory]
    [InlineData("smoa", 8, 2, false)]
    [InlineData("smoa", 5, 3, false)]
    [InlineData("smoa", 4, 1, false)]
    [InlineData("lora", 4, 1, false)]
    [InlineData("lora", 4, 1, true)]
    public void Written_adapter_reads_back_and_serves_the_trained_logits(string kind, int r, int k, bool rslora)
    {
        var targets = new[] { Projection.Q, Projection.V, Projection.O, Projection.Up, Projection.Down };
        var config = kind == "smoa" ? AdapterConfig.Smoa(r, k, 2.0 * r, targets) : AdapterConfig.Lora(r, 2.0 * r, targets, rslora);
        var examples = Enumerable.Range(0, 4).Select(i => BatchTests.Example(300 + i, 12, 4)).ToList();
        using var adapter = TrainableAdapter.Create(Model, config, 5);
        using (var trainer = new Trainer(Model, adapter, new TrainingOptions { BatchSize = 4, LearningRate = 5e-2, Epochs = 3, WarmupRatio = 0 }, new TrainingData(examples, 16)))
            while (!trainer.Finished) trainer.Step();

        using var ids = tensor(new long[] { 5, 17, 300, 2, 999, 41, 7, 8 }).view(1, 8);
        float[] inMemory, baseLogits;
        using (var batch = TrainingBatch.Padded([new TokenizedExample(0, ids.data<long>().Select(v => (int)v).ToArray(), new bool[8])], Model.Device))
        using (var scope = NewDisposeScope())
        using (no_grad())
        {
            inMemory = Floats(Model.Forward(ids, batch.State(Model, adapter.CreateHook())));
            baseLogits = Floats(Model.Forward(ids));
        }
        Assert.True(MaxAbsDiff(inMemory, baseLogits) > 1e-3);   // training moved the adapter

        string parent = TempDir(), dir = Path.Combine(parent, "adapter");
        using (var other = TrainableAdapter.Create(Model, AdapterConfig.Lora(2, 4, [Projection.Q]), 1))
        using (var definition = other.ToDefinition()) AdapterWriter.Write(dir, definition);
        using (var definition = adapter.ToDefinition()) AdapterWriter.Write(dir, definition);
        Assert.Equal(["adapter"], Directory.GetFileSystemEntries(parent).Select(Path.GetFileName));

        using (var file = SafeTensorsFile.Open(Path.Combine(dir, AdapterFiles.WeightsFile)))
        {
            Assert.Equal(kind == "smoa", file.Names.Any(n => n.Contains(".smoa_rows.")));
            Assert.Equal(kind == "smoa", file.Names.Any(n => n.Contains(".smoa_cols.")));
        }
        var view = BaseModelView.From(Model);
        using (var read = AdapterFiles.Read(dir, view))
        {
            Assert.Equal(config.Kind, read.Config.Kind);
            Assert.Equal(config.Scaling, read.Config.Scaling);
            Assert.All(read.Modules.Values, m => Assert.Equal(kind == "smoa", m.CarriedLayout is not null));
        }
        foreach (var form in new[] { SmoaForm.Anchored, SmoaForm.Folded })
        {
            using var registry = new AdapterRegistry(view, options: new AdapterRegistryOptions { SmoaForm = form });
            registry.Load("trained", dir);
            using var scope = NewDisposeScope();
            var served = Floats(Model.Forward(ids, registry.CreateBatch(["trained"])));
            Assert.True(MaxAbsDiff(inMemory, served) <= 1e-4, $"{form}: {MaxAbsDiff(inMemory, served)}");
        }
    }
}
