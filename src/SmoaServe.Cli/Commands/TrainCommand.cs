using System.Globalization;
using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Adapters.Smoa;
using SmoaServe.Engine.Model;
using SmoaServe.Engine.Runtime;
using SmoaServe.Text;
using SmoaServe.Training;
using SmoaServe.Training.Adapters;
using SmoaServe.Training.Data;
using SmoaServe.Training.Optim;

namespace SmoaServe.Cli.Commands;

/// <summary>`smoa train`: fine-tunes a new SMoA or LoRA adapter on chat JSONL data, base model frozen.</summary>
public sealed class TrainCommand : ICommand
{
    public string Name => "train";
    public string Summary => "fine-tune a new SMoA / LoRA adapter on chat JSONL data (base frozen)";
    public string Usage =>
        "usage: smoa train --model DIR --data train.jsonl [--validation v.jsonl] --out ADAPTER_DIR --method smoa|lora\n" +
        "                  [--r R] [--num-blocks K] [--lora-alpha A] [--use-rslora] [--target-modules LIST]\n" +
        "                  [--epochs N] [--batch-size B] [--micro-batch-size M] [--learning-rate LR] [--warmup-ratio W]\n" +
        "                  [--schedule cosine|linear|constant] [--weight-decay WD] [--max-grad-norm C] [--seed S]\n" +
        "                  [--max-seq-len T] [--truncate] [--packing] [--checkpoint FILE] [--save-steps N] [--eval-steps N]\n" +
        "                  [--layout-cache DIR] [--device cpu|cuda] [--dtype float32|bfloat16] [--threads N]\n" +
        "\n" +
        "Data: one {\"messages\": [...]} per line (OpenAI chat fine-tuning format). Each conversation is rendered with the\n" +
        "model's chat template; only assistant tokens are trained (the prompt the server would feed is masked), and an\n" +
        "assistant message with \"weight\": 0 is not trained either.\n" +
        "\n" +
        "  --method smoa|lora         SMoA (Hadamard-modulated blocks; --num-blocks 1 is HiRA) or PEFT LoRA\n" +
        "  --r R                      rank (default 8)\n" +
        "  --num-blocks K             SMoA blocks (default 2)\n" +
        "  --lora-alpha A             scaling numerator (default 2·r): scale A/r, or A/√r with --use-rslora (LoRA)\n" +
        "  --target-modules LIST      e.g. q_proj,v_proj, or 'all' (default: all seven projections)\n" +
        "  --epochs N                 passes over the data (default 1)\n" +
        "  --batch-size B             examples per optimizer step (packed rows with --packing; default 8)\n" +
        "  --micro-batch-size M       examples per forward; gradients are accumulated up to B (default B)\n" +
        "  --learning-rate LR         peak learning rate (default 2e-3 for smoa, 2e-4 for lora)\n" +
        "  --warmup-ratio W           share of the steps with linear warmup (default 0.03)\n" +
        "  --schedule S               decay after warmup: cosine (default), linear or constant\n" +
        "  --weight-decay WD          AdamW's decoupled weight decay (default 0)\n" +
        "  --max-grad-norm C          clip the total gradient norm (default 1; 0 = off)\n" +
        "  --seed S                   initialisation and data order (default 42); the same seed gives the same adapter\n" +
        "  --max-seq-len T            longest conversation in tokens (default min(2048, the model's context))\n" +
        "  --truncate                 cut longer conversations (a warning per line) instead of failing\n" +
        "  --packing                  lay several conversations into each row of up to T tokens (they cannot attend to each other)\n" +
        "  --checkpoint FILE          training state, written every --save-steps steps and per epoch; an existing one is resumed\n" +
        "  --save-steps N             steps between checkpoints (default: once per epoch)\n" +
        "  --eval-steps N             validation every N steps (default: once per epoch)\n" +
        "  --layout-cache DIR         where SMoA layouts (SVDs of the base weights) are cached\n" +
        ModelOptions.Help;

    private static readonly string[] ValueOptions =
        ["model", "data", "validation", "out", "method", "r", "num-blocks", "lora-alpha", "target-modules", "epochs", "batch-size",
         "micro-batch-size", "learning-rate", "warmup-ratio", "schedule", "weight-decay", "max-grad-norm", "seed", "max-seq-len",
         "checkpoint", "save-steps", "eval-steps", "layout-cache", "device", "dtype", "threads"];

    public int Run(string[] args)
    {
        var a = CliArgs.Parse(args, ValueOptions, ["truncate", "packing", "use-rslora"]);
        if (a.Positionals.Count > 0) throw new UsageException($"unexpected argument '{a.Positionals[0]}'");
        string modelDir = a.Required("model"), dataPath = a.Required("data"), outDir = a.Required("out");
        if (!File.Exists(dataPath)) throw new UsageException($"--data: file not found: {dataPath}");
        if (a.Get("validation") is { } v && !File.Exists(v)) throw new UsageException($"--validation: file not found: {v}");
        var method = ParseMethod(a.Get("method") ?? throw new UsageException("--method smoa|lora is required"));
        var config = AdapterConfigFrom(a, method);
        int saveSteps = NonNegative(a, "save-steps"), evalSteps = NonNegative(a, "eval-steps");
        var options = new TrainingOptions
        {
            Epochs = Positive(a, "epochs", 1), BatchSize = Positive(a, "batch-size", 8), MicroBatchSize = NonNegative(a, "micro-batch-size"),
            LearningRate = a.GetDouble("learning-rate", method == AdapterKind.Smoa ? 2e-3 : 2e-4),
            WarmupRatio = a.GetDouble("warmup-ratio", 0.03), Decay = ParseDecay(a.Get("schedule")),
            WeightDecay = a.GetDouble("weight-decay", 0.0), MaxGradNorm = a.GetDouble("max-grad-norm", 1.0),
            Seed = ParseSeed(a.Get("seed")),
        };
        try { options.Validate(); }
        catch (ArgumentException e) { throw new UsageException(e.Message); }

        var log = Console.Error;
        var loadOptions = ModelOptions.LoadOptions(a);
        var tokenizer = TokenizerLoader.Load(modelDir);
        var template = ChatTemplateLoader.Load(modelDir) ?? throw new InvalidDataException($"{modelDir}: the model has no chat template to render the conversations with");
        using var model = LlamaModel.Load(modelDir, loadOptions);
        int maxSeqLen = a.Has("max-seq-len") ? Positive(a, "max-seq-len", 0) : Math.Min(2048, model.Config.MaxPositionEmbeddings);
        if (maxSeqLen < 2 || maxSeqLen > model.Config.MaxPositionEmbeddings)
            throw new UsageException($"--max-seq-len must be between 2 and the model's context ({model.Config.MaxPositionEmbeddings})");

        var dataset = new ChatDataset(tokenizer, template, new ChatDataOptions { MaxSequenceLength = maxSeqLen, Truncate = a.Flag("truncate") });
        var examples = dataset.Load(dataPath, w => log.WriteLine("warning: " + w));
        var validation = a.Get("validation") is { } vp ? dataset.Load(vp, w => log.WriteLine("warning: " + w)) : null;
        var data = new TrainingData(examples, maxSeqLen, a.Flag("packing"));
        log.WriteLine($"data: {examples.Count} conversations, {examples.Sum(e => (long)e.Ids.Length):N0} tokens ({examples.Sum(e => (long)e.TrainedCount):N0} trained)" +
                      (validation is null ? "" : $"; validation {validation.Count} conversations"));

        var layouts = method == AdapterKind.Smoa ? new LayoutStore(BaseModelView.From(model), a.Get("layout-cache")) : null;
        using var adapter = TrainableAdapter.Create(model, config, options.Seed, layouts);
        using var trainer = new Trainer(model, adapter, options, data);
        log.WriteLine($"adapter: {(method == AdapterKind.Smoa ? $"smoa r={config.R} K={config.NumBlocks}" : $"lora r={config.R}{(config.UseRslora ? " rslora" : "")}")}" +
                      $" alpha={config.LoraAlpha.ToString(CultureInfo.InvariantCulture)} on {string.Join(",", config.TargetModules.Select(ProjectionNames.ModuleName))}:" +
                      $" {adapter.ParameterCount:N0} parameters; {trainer.TotalSteps} steps on {model.Device.type} {TorchRuntime.DtypeName(model.Dtype)}");

        string? checkpoint = a.Get("checkpoint");
        if (checkpoint is not null && File.Exists(checkpoint))
        {
            trainer.LoadCheckpoint(checkpoint);
            log.WriteLine($"resumed from {checkpoint} after step {trainer.CompletedSteps}");
        }

        int stepsPerEpoch = trainer.TotalSteps / options.Epochs;
        var progress = new TrainingProgress(log, trainer.TotalSteps, trainer.CompletedSteps);
        while (!trainer.Finished)
        {
            var step = trainer.Step();
            progress.Report(step);
            if (step.Skipped) progress.Message($"step {step.Step}: gradient not finite (norm {step.GradNorm}); update skipped");
            bool epochEnd = step.Step % stepsPerEpoch == 0;
            if (validation is not null && (evalSteps > 0 ? step.Step % evalSteps == 0 || trainer.Finished : epochEnd))
            {
                var eval = trainer.Evaluate(validation);
                progress.Message($"step {step.Step}: validation loss {eval.Loss:F4}, token accuracy {eval.Accuracy:P2} ({eval.ScoredTokens:N0} tokens)");
            }
            if (checkpoint is not null && (saveSteps > 0 ? step.Step % saveSteps == 0 : epochEnd) && !trainer.Finished)
                trainer.SaveCheckpoint(checkpoint);
        }
        progress.Finish();

        using (var definition = adapter.ToDefinition()) AdapterWriter.Write(outDir, definition);
        if (checkpoint is not null) trainer.SaveCheckpoint(checkpoint);
        log.WriteLine($"wrote {outDir} ({progress.Summary})");
        return 0;
    }

    internal static AdapterKind ParseMethod(string value) => value.ToLowerInvariant() switch
    {
        "smoa" => AdapterKind.Smoa,
        "lora" => AdapterKind.Lora,
        _ => throw new UsageException($"--method: '{value}' is not smoa or lora"),
    };

    /// <summary>--r, --num-blocks, --lora-alpha, --use-rslora, --target-modules → an adapter config.</summary>
    internal static AdapterConfig AdapterConfigFrom(CliArgs a, AdapterKind kind, string alphaOption = "lora-alpha")
    {
        int r = a.GetInt("r", 8);
        if (r < 1 || r > AdapterConfig.MaxRank) throw new UsageException($"--r must be between 1 and {AdapterConfig.MaxRank}");
        double alpha = a.GetDouble(alphaOption, 2.0 * r);
        if (!double.IsFinite(alpha) || Math.Abs(alpha) > 1e6) throw new UsageException($"--{alphaOption} must be a finite number");
        var targets = ParseTargets(a.Get("target-modules") ?? "all");
        if (kind == AdapterKind.Lora)
        {
            if (a.Has("num-blocks") && a.GetInt("num-blocks", 1) != 1) throw new UsageException("--num-blocks is for --method smoa");
            return AdapterConfig.Lora(r, alpha, targets, a.Flag("use-rslora"));
        }
        if (a.Flag("use-rslora")) throw new UsageException("--use-rslora is for --method lora");
        int k = a.GetInt("num-blocks", 2);
        if (k < 1 || k > AdapterConfig.MaxBlocks) throw new UsageException($"--num-blocks must be between 1 and {AdapterConfig.MaxBlocks}");
        return AdapterConfig.Smoa(r, k, alpha, targets);
    }

    internal static IReadOnlyList<Projection> ParseTargets(string list)
    {
        if (list is "all" or "all-linear") return Enum.GetValues<Projection>();
        var targets = list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(t =>
            ProjectionNames.TryParse(t, out var p) ? p : throw new UsageException($"--target-modules: '{t}' is not q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj or down_proj")).Distinct().ToList();
        return targets.Count > 0 ? targets : throw new UsageException("--target-modules is empty");
    }

    private static LearningRateDecay ParseDecay(string? value) => (value ?? "cosine").ToLowerInvariant() switch
    {
        "cosine" => LearningRateDecay.Cosine,
        "linear" => LearningRateDecay.Linear,
        "constant" => LearningRateDecay.Constant,
        _ => throw new UsageException($"--schedule: '{value}' is not cosine, linear or constant"),
    };

    internal static ulong ParseSeed(string? value) =>
        value is null ? 42 : ulong.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out ulong s) ? s : throw new UsageException($"--seed: '{value}' is not a non-negative integer");

    private static int Positive(CliArgs a, string name, int fallback)
    {
        int v = a.GetInt(name, fallback);
        return v >= 1 ? v : throw new UsageException($"--{name} must be a positive integer");
    }

    private static int NonNegative(CliArgs a, string name)
    {
        int v = a.GetInt(name, 0);
        return v >= 0 ? v : throw new UsageException($"--{name} must be >= 0");
    }
}
