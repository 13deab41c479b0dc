using System.Text.Json;
using SmoaServe.Engine.Checkpoints;
using SmoaServe.Engine.Model;
using SmoaServe.Training.Data;
using SmoaServe.Training.Optim;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Training;

/// <summary>Hyperparameters of a training run (what a checkpoint must match to be resumed).</summary>
public sealed record TrainingOptions
{
    public int Epochs { get; init; } = 1;
    /// <summary>Rows per optimizer step: examples, or packed rows with packing.</summary>
    public int BatchSize { get; init; } = 8;
    /// <summary>Rows per forward; gradients of ⌈batch / micro⌉ forwards are accumulated. 0: the whole batch at once.</summary>
    public int MicroBatchSize { get; init; }
    public double LearningRate { get; init; } = 2e-4;
    public double WarmupRatio { get; init; }
    public LearningRateDecay Decay { get; init; } = LearningRateDecay.Cosine;
    /// <summary>AdamW's decoupled weight decay (given explicitly: PyTorch's AdamW defaults to 0.01, TorchSharp's to 0).</summary>
    public double WeightDecay { get; init; }
    /// <summary>Total gradient L2 norm is clipped to this; 0 or less: no clipping.</summary>
    public double MaxGradNorm { get; init; } = 1.0;
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.999;
    public double Epsilon { get; init; } = 1e-8;
    public ulong Seed { get; init; } = 42;
    public int PadTokenId { get; init; }

    public int EffectiveMicroBatchSize => MicroBatchSize <= 0 ? BatchSize : Math.Min(MicroBatchSize, BatchSize);

    public void Validate()
    {
        if (Epochs < 1 || Epochs > 100_000) throw new ArgumentException($"epochs must be between 1 and 100000 (got {Epochs})");
        if (BatchSize < 1 || BatchSize > 1 << 20) throw new ArgumentException($"batch size must be between 1 and {1 << 20} (got {BatchSize})");
        if (MicroBatchSize < 0) throw new ArgumentException($"micro-batch size must be >= 0 (got {MicroBatchSize})");
        if (!(LearningRate >= 0) || double.IsInfinity(LearningRate)) throw new ArgumentException($"learning rate must be finite and >= 0 (got {LearningRate})");
        if (!(WarmupRatio >= 0 && WarmupRatio <= 1)) throw new ArgumentException($"warmup ratio must be in [0, 1] (got {WarmupRatio})");
        if (!(WeightDecay >= 0) || double.IsInfinity(WeightDecay)) throw new ArgumentException($"weight decay must be finite and >= 0 (got {WeightDecay})");
        if (double.IsNaN(MaxGradNorm) || double.IsInfinity(MaxGradNorm)) throw new ArgumentException("max grad norm must be finite");
    }
}

/// <param name="Step">1-based number of the step just taken</param>
/// <param name="Loss">mean cross-entropy over the batch's scored tokens (before the update)</param>
/// <param name="Accuracy">share of scored tokens whose argmax was right (before the update)</param>
/// <param name="GradNorm">total gradient norm before clipping</param>
/// <param name="Tokens">real (non-padding) tokens in the batch</param>
/// <param name="Skipped">the gradient was not finite: no update was made</param>
public sealed record StepResult(int Step, int TotalSteps, int Epoch, double Loss, double Accuracy, double GradNorm, double LearningRate,
    long Tokens, long ScoredTokens, double Seconds, bool Skipped);

public sealed record Evaluation(double Loss, double Accuracy, long ScoredTokens, long Tokens, double Seconds);

/// <summary>
/// Trains an <see cref="ITrainable"/> on a frozen model, one optimizer step per <see cref="Step()"/> call, so the caller
/// decides when steps run (e.g. in slices on a model thread that also serves). Each step: the batch's micro-batches
/// forward and backward (gradients accumulated, the loss normalised by the whole batch's scored tokens), gradient
/// clipping, AdamW with the scheduled learning rate. Every step's tensors live in its own dispose scope; the trainer
/// keeps only the optimizer state. Resumable: <see cref="SaveCheckpoint"/> / <see cref="LoadCheckpoint"/>.
/// All calls must come from one thread (TorchSharp's dispose scopes and grad mode are per thread).
/// </summary>
public sealed class Trainer : IDisposable
{
    public const string CheckpointFormat = "smoa-training-checkpoint";
    private static readonly JsonSerializerOptions Json = new() { WriteIndented = false };

    private readonly LlamaModel _model;
    private readonly ITrainable _trainable;
    private readonly TrainingData? _data;
    private readonly AdamW _optimizer;
    private readonly int _stepsPerEpoch;
    private readonly string? _dataFingerprint;
    private (int Epoch, List<TokenizedExample[]> Rows)? _epochRows;

    public TrainingOptions Options { get; }
    public LearningRateSchedule Schedule { get; }
    public int CompletedSteps { get; private set; }
    /// <summary>Steps of the whole run (epochs × steps per epoch); 0 without training data.</summary>
    public int TotalSteps { get; }
    public bool Finished => CompletedSteps >= TotalSteps;

    /// <param name="data">the training data <see cref="Step()"/> draws from (null: only <see cref="Step(IReadOnlyList{TrainingBatch}, double, Action?)"/>)</param>
    public Trainer(LlamaModel model, ITrainable trainable, TrainingOptions options, TrainingData? data = null)
    {
        options.Validate();
        _model = model;
        _trainable = trainable;
        _data = data;
        _dataFingerprint = data?.Fingerprint();
        Options = options;
        _stepsPerEpoch = data?.StepsPerEpoch(options.BatchSize, options.Seed) ?? 0;
        TotalSteps = checked(_stepsPerEpoch * options.Epochs);
        Schedule = LearningRateSchedule.FromRatio(options.LearningRate, TotalSteps, options.WarmupRatio, options.Decay);
        _optimizer = new AdamW(trainable.Parameters, options.WeightDecay, options.Beta1, options.Beta2, options.Epsilon);
    }

    /// <summary>The next batch of the training data, at the scheduled learning rate.</summary>
    public StepResult Step()
    {
        if (_data is null) throw new InvalidOperationException("this trainer has no training data");
        if (Finished) throw new InvalidOperationException($"training is finished ({TotalSteps} steps)");
        int epoch = CompletedSteps / _stepsPerEpoch, index = CompletedSteps % _stepsPerEpoch;
        if (_epochRows is not { } cached || cached.Epoch != epoch) _epochRows = cached = (epoch, _data.EpochRows(epoch, Options.Seed));
        var rows = cached.Rows.Skip(index * Options.BatchSize).Take(Options.BatchSize).ToList();
        var batches = new List<TrainingBatch>();
        try
        {
            for (int start = 0; start < rows.Count; start += Options.EffectiveMicroBatchSize)
            {
                var micro = rows.Skip(start).Take(Options.EffectiveMicroBatchSize).ToList();
                batches.Add(_data.Packing
                    ? TrainingBatch.Packed(micro, _model.Device, Options.PadTokenId)
                    : TrainingBatch.Padded(micro.Select(r => r[0]).ToList(), _model.Device, Options.PadTokenId));
            }
            return Step(batches, Schedule.At(CompletedSteps)) with { Epoch = epoch + 1 };
        }
        finally
        {
            foreach (var b in batches) b.Dispose();
        }
    }

    /// <summary>
    /// One optimizer step over the given micro-batches (one batch together) at learning rate <paramref name="learningRate"/>.
    /// </summary>
    /// <param name="afterBackward">called with the accumulated gradients in place, before clipping</param>
    public StepResult Step(IReadOnlyList<TrainingBatch> microBatches, double learningRate, Action? afterBackward = null)
    {
        if (microBatches.Count == 0) throw new ArgumentException("a step needs at least one batch");
        var clock = System.Diagnostics.Stopwatch.StartNew();
        using var scope = NewDisposeScope();
        using var gradMode = enable_grad();
        ClearGradients();
        long scored = microBatches.Sum(b => b.ScoredCount);
        double lossSum = 0;
        long correct = 0;
        foreach (var batch in microBatches)
        {
            var (loss, right) = Accumulate(batch, scored);
            lossSum += loss;
            correct += right;
        }
        afterBackward?.Invoke();
        return Update(lossSum, correct, scored, microBatches.Sum(b => b.Tokens), learningRate, 0) with { Seconds = clock.Elapsed.TotalSeconds };
    }

    /// <summary>
    /// The next step of the training data, taken in pieces: this call picks the batch and clears the gradients; each
    /// <see cref="StepPiece"/> runs one micro-batch's forward and backward (gradients accumulate); <see cref="FinishStep"/>
    /// clips and updates. The same arithmetic as <see cref="Step()"/>, so a caller may run other work on the thread
    /// between micro-batches (a server decoding between them). All pieces on the trainer's thread, in order.
    /// </summary>
    public StepPieces BeginStep()
    {
        if (_data is null) throw new InvalidOperationException("this trainer has no training data");
        if (Finished) throw new InvalidOperationException($"training is finished ({TotalSteps} steps)");
        int epoch = CompletedSteps / _stepsPerEpoch, index = CompletedSteps % _stepsPerEpoch;
        if (_epochRows is not { } cached || cached.Epoch != epoch) _epochRows = cached = (epoch, _data.EpochRows(epoch, Options.Seed));
        var rows = cached.Rows.Skip(index * Options.BatchSize).Take(Options.BatchSize).ToList();
        var pieces = new StepPieces(epoch + 1, Schedule.At(CompletedSteps), CompletedSteps);
        try
        {
            for (int start = 0; start < rows.Count; start += Options.EffectiveMicroBatchSize)
            {
                var micro = rows.Skip(start).Take(Options.EffectiveMicroBatchSize).ToList();
                pieces.Batches.Add(_data.Packing
                    ? TrainingBatch.Packed(micro, _model.Device, Options.PadTokenId)
                    : TrainingBatch.Padded(micro.Select(r => r[0]).ToList(), _model.Device, Options.PadTokenId));
            }
        }
        catch
        {
            pieces.Dispose();
            throw;
        }
        pieces.Scored = pieces.Batches.Sum(b => b.ScoredCount);
        ClearGradients();
        return pieces;
    }

    /// <summary>One micro-batch of a step begun with <see cref="BeginStep"/>: forward and backward, gradients accumulated.</summary>
    public void StepPiece(StepPieces pieces)
    {
        if (pieces.Done || pieces.Step != CompletedSteps) throw new InvalidOperationException("no micro-batch left in this step");
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        using (var scope = NewDisposeScope())
        using (var gradMode = enable_grad())
        {
            var (loss, correct) = Accumulate(pieces.Batches[pieces.Next], pieces.Scored);
            pieces.LossSum += loss;
            pieces.Correct += correct;
        }
        pieces.Next++;
        pieces.Seconds += System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalSeconds;
    }

    /// <summary>Clips, updates and counts the step once every micro-batch has run; disposes the step's batches.</summary>
    public StepResult FinishStep(StepPieces pieces)
    {
        if (!pieces.Done || pieces.Step != CompletedSteps) throw new InvalidOperationException("the step's micro-batches have not all run");
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        try
        {
            using var scope = NewDisposeScope();
            using var gradMode = enable_grad();
            var result = Update(pieces.LossSum, pieces.Correct, pieces.Scored, pieces.Batches.Sum(b => b.Tokens), pieces.LearningRate, 0);
            return result with { Epoch = pieces.Epoch, Seconds = pieces.Seconds + System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalSeconds };
        }
        finally { pieces.Dispose(); }
    }

    /// <summary>One micro-batch's forward and backward, its loss normalised by the whole batch's scored tokens; (loss sum, correct).</summary>
    private (double Loss, long Correct) Accumulate(TrainingBatch batch, long scored)
    {
        using var inner = NewDisposeScope();
        var result = CausalLmLoss.Compute(_model, batch, _trainable.CreateHook());
        if (batch.ScoredCount > 0) (result.Sum / scored).backward();
        return (result.Sum.item<float>(), result.Correct.item<long>());
    }

    /// <summary>Clipping, AdamW at <paramref name="learningRate"/> unless the gradient is not finite, and the step's count.</summary>
    private StepResult Update(double lossSum, long correct, long scored, long tokens, double learningRate, double seconds)
    {
        double norm = GradientClipping.ClipTotalNorm(_trainable.Parameters.Select(p => p.Value), Options.MaxGradNorm);
        bool skipped = !double.IsFinite(norm) || !double.IsFinite(lossSum);
        if (!skipped) _optimizer.Step(learningRate);
        ClearGradients();
        CompletedSteps++;
        return new StepResult(CompletedSteps, TotalSteps, 0, scored > 0 ? lossSum / scored : 0, scored > 0 ? (double)correct / scored : 0, norm,
            learningRate, tokens, scored, seconds, skipped);
    }

    /// <summary>Mean loss and token accuracy over <paramref name="examples"/> (no gradients, padded batches in order).</summary>
    public Evaluation Evaluate(IReadOnlyList<TokenizedExample> examples, int batchSize = 0)
    {
        if (batchSize <= 0) batchSize = Options.EffectiveMicroBatchSize;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        double lossSum = 0;
        long correct = 0, scored = 0, tokens = 0;
        using var noGrad = no_grad();
        for (int start = 0; start < examples.Count; start += batchSize)
        {
            using var scope = NewDisposeScope();
            using var batch = TrainingBatch.Padded(examples.Skip(start).Take(batchSize).ToList(), _model.Device, Options.PadTokenId);
            var result = CausalLmLoss.Compute(_model, batch, _trainable.CreateHook());
            lossSum += result.Sum.item<float>();
            correct += result.Correct.item<long>();
            scored += batch.ScoredCount;
            tokens += batch.Tokens;
        }
        return new Evaluation(scored > 0 ? lossSum / scored : 0, scored > 0 ? (double)correct / scored : 0, scored, tokens, clock.Elapsed.TotalSeconds);
    }

    /// <summary>
    /// Writes parameters, optimizer moments and step counts, and the run's identity (options, trainable, data) to one
    /// safetensors file, atomically (temporary file, fsync, rename): a crash leaves the previous checkpoint intact.
    /// </summary>
    public void SaveCheckpoint(string path)
    {
        using var checkpoint = CaptureCheckpoint();
        checkpoint.Write(path);
    }

    /// <summary>
    /// The training state as CPU copies, taken on the training thread; <see cref="TrainingCheckpoint.Write"/> may then
    /// run on any thread, so the file I/O of a checkpoint need not hold up the thread that trains (and serves).
    /// </summary>
    public TrainingCheckpoint CaptureCheckpoint()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var tensors = new List<(string, Tensor)>();
        foreach (var p in _trainable.Parameters) tensors.Add(("param." + p.Name, p.Value.detach()));
        tensors.AddRange(_optimizer.StateTensors());
        var copies = tensors.Select(t => (t.Item1, t.Item2.to(ScalarType.Float32).cpu().contiguous().clone().DetachFromDisposeScope())).ToList();
        var state = new CheckpointState(CompletedSteps, TotalSteps, _optimizer.Steps, JsonSerializer.Serialize(Options, Json),
            _trainable.Describe(), _dataFingerprint);
        return new TrainingCheckpoint(CompletedSteps, copies, new Dictionary<string, string>
        {
            ["format"] = CheckpointFormat,
            ["state"] = JsonSerializer.Serialize(state, Json),
        });
    }

    /// <summary>
    /// Restores a checkpoint of the same run (same options, trainable and data; anything else is an error) and continues
    /// after its last completed step.
    /// </summary>
    public void LoadCheckpoint(string path)
    {
        using var file = SafeTensorsFile.Open(path);
        if (!file.Metadata.TryGetValue("format", out var format) || format != CheckpointFormat || !file.Metadata.TryGetValue("state", out var stateJson))
            throw new InvalidDataException($"{path}: not a training checkpoint");
        CheckpointState state;
        try { state = JsonSerializer.Deserialize<CheckpointState>(stateJson, Json) ?? throw new InvalidDataException($"{path}: empty state"); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: damaged state ({e.Message})"); }
        if (state.Options != JsonSerializer.Serialize(Options, Json))
            throw new InvalidDataException($"{path}: written with other training options ({state.Options}); resume with the same options");
        if (state.Trainable != _trainable.Describe()) throw new InvalidDataException($"{path}: written for another adapter (its method, rank, targets or layouts differ)");
        if (state.Data != _dataFingerprint) throw new InvalidDataException($"{path}: written for other training data");
        if (state.CompletedSteps < 0 || state.CompletedSteps > TotalSteps && TotalSteps > 0)
            throw new InvalidDataException($"{path}: {state.CompletedSteps} completed steps of {TotalSteps}");

        Tensor Read(string name, long[] shape)
        {
            if (!file.Contains(name)) throw new InvalidDataException($"{path}: tensor '{name}' is missing");
            var info = file.Info(name);
            if (info.DType != "F32" || !info.Shape.SequenceEqual(shape))
                throw new InvalidDataException($"{path}: tensor '{name}' is {info.DType} [{string.Join(", ", info.Shape)}], expected F32 [{string.Join(", ", shape)}]");
            return file.ReadTensor(name, ScalarType.Float32, _model.Device);
        }

        using (var scope = NewDisposeScope())
        using (no_grad())
            foreach (var p in _trainable.Parameters) p.Value.copy_(Read("param." + p.Name, p.Value.shape));
        _optimizer.LoadState(Read, state.AdamSteps);
        CompletedSteps = state.CompletedSteps;
    }

    private void ClearGradients()
    {
        foreach (var p in _trainable.Parameters) p.Value.grad = null;
    }

    public void Dispose() => _optimizer.Dispose();

    private sealed record CheckpointState(int CompletedSteps, int TotalSteps, long[] AdamSteps, string Options, string Trainable, string? Data);
}

/// <summary>A captured training state (CPU tensors it owns); written as one safetensors file, atomically.</summary>
public sealed class TrainingCheckpoint(int completedSteps, List<(string Name, Tensor Value)> tensors, Dictionary<string, string> metadata) : IDisposable
{
    public int CompletedSteps { get; } = completedSteps;

    /// <summary>Temporary file, fsync, rename: a crash leaves the previous file intact.</summary>
    public void Write(string path) => SafeTensorsWriter.Write(path, tensors, metadata);

    public void Dispose()
    {
        foreach (var (_, t) in tensors) t.Dispose();
    }
}

/// <summary>A step of <see cref="Trainer.BeginStep"/> in progress: its micro-batches (owned), how many have run, the sums so far.</summary>
public sealed class StepPieces : IDisposable
{
    internal StepPieces(int epoch, double learningRate, int step)
    {
        Epoch = epoch;
        LearningRate = learningRate;
        Step = step;
    }

    internal List<TrainingBatch> Batches { get; } = [];
    internal int Epoch { get; }
    internal double LearningRate { get; }
    /// <summary>Completed steps when it began (0-based index of this step).</summary>
    internal int Step { get; }
    internal int Next { get; set; }
    internal long Scored { get; set; }
    internal double LossSum { get; set; }
    internal long Correct { get; set; }
    /// <summary>Time spent in this step's own pieces so far (not between them).</summary>
    public double Seconds { get; internal set; }

    /// <summary>Micro-batches in the step.</summary>
    public int Count => Batches.Count;
    /// <summary>Every micro-batch has run; <see cref="Trainer.FinishStep"/> is next.</summary>
    public bool Done => Next >= Batches.Count;

    public void Dispose()
    {
        foreach (var b in Batches) b.Dispose();
        Batches.Clear();
    }
}
