using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Model;
using SmoaServe.Training.Adapters;
using SmoaServe.Training.Data;
using SmoaServe.Training.Optim;
using TorchSharp;
using static SmoaServe.Training.Tests.TestSupport;
using static TorchSharp.torch;

namespace SmoaServe.Training.Tests;

public sealed class TrainerTests
{
    private static TrainingData Data(bool packing = false) =>
        new(Enumerable.Range(0, 10).Select(i => BatchTests.Example(100 + i, 8 + 3 * i, 4)).ToList(), packing ? 40 : 64, packing);

    private static TrainingOptions Options => new()
    {
        Epochs = 2, BatchSize = 4, MicroBatchSize = 2, LearningRate = 1e-2, WarmupRatio = 0.2, WeightDecay = 0.05, MaxGradNorm = 1.0, Seed = 11,
    };

    private static float[][] Snapshot(TrainableAdapter adapter) => adapter.Parameters.Select(p => Floats(p.Value)).ToArray();

    private static float[][] Train(AdapterConfig config, TrainingOptions options, TrainingData data)
    {
        using var adapter = TrainableAdapter.Create(Model, config, options.Seed);
        using var trainer = new Trainer(Model, adapter, options, data);
        while (!trainer.Finished) trainer.Step();
        return Snapshot(adapter);
    }

    [Fact]
    public void The_same_seed_gives_the_same_adapter_and_another_seed_another()
    {
        var first = Train(BatchTests.SmoaAll, Options, Data());
        var second = Train(BatchTests.SmoaAll, Options, Data());
        var other = Train(BatchTests.SmoaAll, Options with { Seed = 12 }, Data());
        for (int i = 0; i < first.Length; i++) Assert.Equal(first[i], second[i]);
        Assert.Contains(Enumerable.Range(0, first.Length), i => !first[i].SequenceEqual(other[i]));
    }

    [Fact]
    public void A_step_taken_in_pieces_with_other_work_between_them_is_the_same_step()
    {
        var straight = Train(BatchTests.SmoaAll, Options, Data());
        using var adapter = TrainableAdapter.Create(Model, BatchTests.SmoaAll, Options.Seed);
        using var trainer = new Trainer(Model, adapter, Options, Data());
        var losses = new List<double>();
        var counts = new List<int>();
        while (!trainer.Finished)
        {
            using var pieces = trainer.BeginStep();
            counts.Add(pieces.Count);
            while (!pieces.Done)
            {
                trainer.StepPiece(pieces);
                using (no_grad()) using (var scope = NewDisposeScope()) Model.Forward(tensor(new long[,] { { 1, 2, 3 } }));   // a decode between pieces
            }
            Assert.Throws<InvalidOperationException>(() => trainer.StepPiece(pieces));
            losses.Add(trainer.FinishStep(pieces).Loss);
        }
        var pieced = Snapshot(adapter);
        for (int i = 0; i < straight.Length; i++) Assert.Equal(straight[i], pieced[i]);
        Assert.All(losses, l => Assert.True(l > 0));
        Assert.Equal([2, 2, 1, 2, 2, 1], counts);   // batches of 4, 4, 2 examples in micro-batches of 2
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_resumed_run_ends_exactly_where_an_uninterrupted_one_does(bool packing)
    {
        var config = AdapterConfig.Lora(4, 8, [Projection.Q, Projection.V, Projection.Down]);
        var options = Options with { BatchSize = packing ? 2 : 4 };   // packed: 10 examples in 6 or 7 rows
        var straight = Train(config, options, Data(packing));

        string checkpoint = Path.Combine(TempDir(), "state.safetensors");
        using (var adapter = TrainableAdapter.Create(Model, config, Options.Seed))
        using (var trainer = new Trainer(Model, adapter, options, Data(packing)))
        {
            Assert.True(trainer.TotalSteps >= 6);
            for (int i = 0; i < 3; i++) trainer.Step();
            trainer.SaveCheckpoint(checkpoint);
            trainer.Step();   // progress after the checkpoint is lost in the "crash"
        }
        using var resumedAdapter = TrainableAdapter.Create(Model, config, seed: 999);   // initial values are overwritten
        using var resumed = new Trainer(Model, resumedAdapter, options, Data(packing));
        resumed.LoadCheckpoint(checkpoint);
        Assert.Equal(3, resumed.CompletedSteps);
        while (!resumed.Finished) resumed.Step();
        var end = Snapshot(resumedAdapter);
        for (int i = 0; i < straight.Length; i++) Assert.Equal(straight[i], end[i]);
    }

    [Fact]
    public void A_checkpoint_is_refused_by_another_run()
    {
        var config = AdapterConfig.Lora(4, 8, [Projection.Q]);
        string checkpoint = Path.Combine(TempDir(), "state.safetensors");
        using (var adapter = TrainableAdapter.Create(Model, config, 1))
        using (var trainer = new Trainer(Model, adapter, Options, Data()))
        {
            trainer.Step();
            trainer.SaveCheckpoint(checkpoint);
        }
        Assert.Empty(Directory.GetFiles(Path.GetDirectoryName(checkpoint)!, "*.tmp"));
        using var other = TrainableAdapter.Create(Model, config, 1);
        using (var lr = new Trainer(Model, other, Options with { LearningRate = 0.5 }, Data()))
            Assert.Contains("options", Assert.Throws<InvalidDataException>(() => lr.LoadCheckpoint(checkpoint)).Message);
        using (var data = new Trainer(Model, other, Options, Data(packing: true)))
            Assert.Contains("data", Assert.Throws<InvalidDataException>(() => data.LoadCheckpoint(checkpoint)).Message);
        using var bigger = TrainableAdapter.Create(Model, AdapterConfig.Lora(8, 8, [Projection.Q]), 1);
        using (var rank = new Trainer(Model, bigger, Options, Data()))
            Assert.Contains("adapter", Assert.Throws<InvalidDataException>(() => rank.LoadCheckpoint(checkpoint)).Message);
    }

    [Fact]
    public void Accumulated_micro_batches_give_the_whole_batch_loss_and_gradients()
    {
        var examples = Enumerable.Range(0, 4).Select(i => BatchTests.Example(200 + i, 10 + 5 * i, 3)).ToList();
        (double Loss, float[][] Grads) Run(int micro)
        {
            using var adapter = BatchTests.RandomAdapter(BatchTests.SmoaAll);
            using var trainer = new Trainer(Model, adapter, Options with { BatchSize = 4, MicroBatchSize = micro });
            var batches = examples.Chunk(micro).Select(c => TrainingBatch.Padded(c, Model.Device)).ToList();
            float[][] grads = [];
            var result = trainer.Step(batches, 1e-3, () => grads = adapter.Parameters.Select(p => Floats(p.Value.grad!)).ToArray());
            foreach (var b in batches) b.Dispose();
            return (result.Loss, grads);
        }
        var whole = Run(4);
        var split = Run(1);
        Assert.True(Math.Abs(whole.Loss - split.Loss) <= 1e-5 * whole.Loss);
        for (int i = 0; i < whole.Grads.Length; i++)
            Assert.True(MaxAbsDiff(whole.Grads[i], split.Grads[i]) <= 1e-5 * (1 + MaxAbs(whole.Grads[i])), $"gradient {i}");
    }

    [Fact]
    public void AdamW_matches_torch_optim_AdamW()
    {
        using var generator = new Generator(5);
        using var start = randn([3, 7], generator: generator);
        var grads = Enumerable.Range(0, 6).Select(_ => randn([3, 7], generator: generator)).ToList();

        using var ours = start.clone().requires_grad_(true);
        using var adamw = new AdamW([new TrainableTensor("w", ours)], weightDecay: 0.1, beta1: 0.8, beta2: 0.95, epsilon: 1e-6);
        var parameter = new TorchSharp.Modules.Parameter(start.clone());
        using var reference = optim.AdamW([parameter], lr: 3e-2, beta1: 0.8, beta2: 0.95, eps: 1e-6, weight_decay: 0.1);
        foreach (var g in grads)
        {
            ours.grad = g.clone();
            adamw.Step(3e-2);
            parameter.grad = g.clone();
            reference.step();
        }
        Assert.True(MaxAbsDiff(Floats(ours), Floats(parameter)) <= 1e-6);
        Assert.Equal(6, adamw.StepsOf(0));
        foreach (var g in grads) g.Dispose();
    }

    [Fact]
    public void Gradient_clipping_scales_by_max_norm_over_the_total_norm()
    {
        using var a = tensor(new float[] { 3, 0 }).requires_grad_(true);
        using var b = tensor(new float[] { 0, 4 }).requires_grad_(true);
        a.grad = tensor(new float[] { 3, 0 });
        b.grad = tensor(new float[] { 0, 4 });
        double norm = GradientClipping.ClipTotalNorm([a, b], 1.0);
        Assert.Equal(5.0, norm, 5);
        Assert.Equal(3 / (5 + 1e-6), Floats(a.grad!)[0], 5);
        Assert.Equal(4 / (5 + 1e-6), Floats(b.grad!)[1], 5);
        Assert.Equal(1.0, GradientClipping.ClipTotalNorm([a, b], 10.0), 5);   // under the limit: unchanged
        Assert.Equal(3 / (5 + 1e-6), Floats(a.grad!)[0], 5);
    }

    [Fact]
    public void Schedules_warm_up_linearly_then_decay_as_hugging_face()
    {
        var cosine = LearningRateSchedule.FromRatio(2.0, 10, 0.15, LearningRateDecay.Cosine);   // ⌈1.5⌉ = 2 warmup steps
        Assert.Equal(2, cosine.WarmupSteps);
        Assert.Equal([0.0, 1.0, 2.0], new[] { cosine.At(0), cosine.At(1), cosine.At(2) });
        Assert.Equal(1.0, cosine.At(6), 12);                     // half way through the decay: cos(π/2)
        Assert.Equal(2.0 * 0.5 * (1 + Math.Cos(Math.PI * 7 / 8)), cosine.At(9), 12);
        var linear = LearningRateSchedule.FromRatio(2.0, 10, 0.15, LearningRateDecay.Linear);
        Assert.Equal(1.0, linear.At(6), 12);
        Assert.Equal(0.25, linear.At(9), 12);
        Assert.Equal(2.0, LearningRateSchedule.FromRatio(2.0, 10, 0, LearningRateDecay.Constant).At(9));
    }

    [Theory]
    [InlineData("smoa")]
    [InlineData("lora")]
    public void A_new_adapter_is_initialised_as_peft_does_and_starts_at_the_base_model(string kind)
    {
        var config = kind == "smoa" ? AdapterConfig.Smoa(6, 3, 12, [Projection.Q, Projection.Down]) : AdapterConfig.Lora(6, 12, [Projection.Q, Projection.Down]);
        using var adapter = TrainableAdapter.Create(Model, config, 3);
        using var again = TrainableAdapter.Create(Model, config, 3);
        using var scope = NewDisposeScope();
        var factors = adapter.Factors().ToList();
        foreach (var (key, value) in factors)
        {
            var v = Floats(value!);
            if (key.Contains("lora_B")) Assert.All(v, x => Assert.Equal(0f, x));
            else
            {
                double bound = 1 / Math.Sqrt(value!.shape[1]);
                Assert.All(v, x => Assert.True(Math.Abs(x) <= bound));
                Assert.True(MaxAbs(v) > 0.5 * bound);
            }
        }
        Assert.Equal(factors.Select(f => Floats(f.Value!)), again.Factors().Select(f => Floats(f.Value!)));

        using var ids = tensor(new long[] { 5, 17, 300, 2, 999, 41 }).view(1, 6);
        using var noGrad = no_grad();
        var base_ = Floats(Model.Forward(ids));
        using var batch = TrainingBatch.Padded([new TokenizedExample(0, [5, 17, 300, 2, 999, 41], new bool[6])], Model.Device);
        Assert.Equal(base_, Floats(Model.Forward(ids, batch.State(Model, adapter.CreateHook()))));
    }
}
