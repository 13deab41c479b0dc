using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Checkpoints;
using SmoaServe.Engine.Model;
using SmoaServe.Training;
using SmoaServe.Training.Adapters;
using SmoaServe.Training.Data;

namespace SmoaServe.Cli.Commands;

/// <summary>
/// `smoa train-step`: N training steps of an existing adapter on one given batch at a constant learning rate — the
/// exact recipe of the reference training-step files, for checking the trainer against another implementation.
/// </summary>
public sealed class TrainStepCommand : ICommand
{
    public string Name => "train-step";
    public string Summary => "N training steps on one batch (safetensors in/out) to check the trainer against a reference";
    public string Usage =>
        "usage: smoa train-step --model DIR --adapter INIT_DIR --input BATCH.safetensors --output OUT.safetensors\n" +
        "                       --steps N --learning-rate LR --weight-decay WD --max-grad-norm C [--device cpu|cuda] [--dtype ...] [--threads N]\n" +
        "\n" +
        "BATCH holds input_ids, attention_mask and labels, int64 [B, T] (labels -100 = not scored; logits at t predict\n" +
        "labels[t+1]). Every lora_A / lora_B tensor of the adapter is trained, the base frozen. Each step: loss (mean over\n" +
        "the batch's scored labels), backward, the total gradient norm clipped to C, AdamW (betas 0.9, 0.999, eps 1e-8,\n" +
        "decoupled weight decay WD) at learning rate LR. OUT gets loss_steps [N], grad_norm_steps [N] (before clipping),\n" +
        "grad.KEY (step-1 gradients before clipping) and after.KEY (the adapter after step N), KEY as in\n" +
        "adapter_model.safetensors. OUT is replaced atomically.\n" +
        "\n" +
        ModelOptions.Help;

    public int Run(string[] args)
    {
        var a = CliArgs.Parse(args, ["model", "adapter", "input", "output", "steps", "learning-rate", "weight-decay", "max-grad-norm", "device", "dtype", "threads"]);
        if (a.Positionals.Count > 0) throw new UsageException($"unexpected argument '{a.Positionals[0]}'");
        string modelDir = a.Required("model"), adapterDir = a.Required("adapter"), input = a.Required("input"), output = a.Required("output");
        int steps = a.RequiredInt("steps");
        if (steps < 1 || steps > 100_000) throw new UsageException("--steps must be between 1 and 100000");
        double lr = Number(a, "learning-rate"), wd = Number(a, "weight-decay"), clip = Number(a, "max-grad-norm");
        if (lr < 0 || wd < 0) throw new UsageException("--learning-rate and --weight-decay must be >= 0");
        if (!File.Exists(input)) throw new UsageException($"--input: file not found: {input}");
        if (!Directory.Exists(adapterDir)) throw new UsageException($"--adapter: directory not found: {adapterDir}");

        using var model = LlamaModel.Load(modelDir, ModelOptions.LoadOptions(a));
        using var definition = AdapterFiles.Read(adapterDir, BaseModelView.From(model));
        using var adapter = TrainableAdapter.FromDefinition(model, definition);
        using var file = SafeTensorsFile.Open(input);
        foreach (var name in new[] { "input_ids", "attention_mask", "labels" })
        {
            if (!file.Contains(name)) throw new InvalidDataException($"{input}: tensor '{name}' is missing");
            var info = file.Info(name);
            if (info.DType is not ("I64" or "I32") || info.Shape.Length != 2)
                throw new InvalidDataException($"{input}: '{name}' must be an integer [B, T] tensor (is {info.DType} [{string.Join(", ", info.Shape)}])");
        }
        using var ids = file.ReadTensor("input_ids");
        using var mask = file.ReadTensor("attention_mask");
        using var labels = file.ReadTensor("labels");
        using var batch = TrainingBatch.FromTensors(ids, mask, labels, model.Config.VocabSize, model.Device);

        var clock = System.Diagnostics.Stopwatch.StartNew();
        using var report = TrainStepRecipe.Run(model, adapter, batch, steps, lr, wd, clip);
        report.Write(output);
        for (int s = 0; s < steps; s++) Console.Error.WriteLine($"step {s + 1}: loss {report.Losses[s]:F6}, grad norm {report.GradNorms[s]:F6}");
        Console.Error.WriteLine($"{steps} step(s) in {clock.Elapsed.TotalSeconds:F2} s -> {output}");
        return 0;
    }

    private static double Number(CliArgs a, string name)
    {
        double v = a.GetDouble(name, double.NaN);
        if (double.IsNaN(v)) throw new UsageException($"--{name} is required");
        return double.IsFinite(v) ? v : throw new UsageException($"--{name} must be finite");
    }
}
