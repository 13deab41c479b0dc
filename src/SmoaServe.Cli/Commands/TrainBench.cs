using System.Diagnostics;
using System.Text.Json;
using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Adapters.Smoa;
using SmoaServe.Engine.Checkpoints;
using SmoaServe.Engine.Model;
using SmoaServe.Engine.Runtime;
using SmoaServe.Training;
using SmoaServe.Training.Adapters;
using SmoaServe.Training.Data;
using SmoaServe.Training.Optim;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Cli.Commands;

/// <summary>
/// `smoa bench train`: adapter-training throughput (tokens/s through forward, backward and AdamW) on a synthetic or
/// real model, and the share of the machine's measured GEMM peak that the model's own arithmetic reaches.
/// FLOPs per trained token, base frozen: the model's 4·P (the matmul weights P once forward and once for the input
/// gradient; no weight gradients) + 12·L·T·H·D (attention scores and values, forward and twice that backward, PaLM's
/// count), plus the adapter's own multiply-adds in the form it trains in (forward, input gradient, factor gradient):
/// LoRA 6·r·(m + n) per module; SMoA blockwise 6·Σ_k |R_k|·|C_k| ≈ 6·m·n/K, folded 6·m·n (+ forming the blocks once per
/// step, spread over the step's tokens).
/// </summary>
internal static class TrainBench
{
    public const string Usage = $"""
        usage: smoa bench train (--synthetic {SyntheticLlama.SpecHelp} | --model DIR)
                 --adapter-kind smoa|lora --r R [--num-blocks K] --target-modules a,b,... --batch B --seq T --steps S
                 [--warmup W] [--alpha A] [--seed S] [--random-layout] [--gemm-size N] [--json]
                 [--device cpu|cuda] [--dtype float32|bfloat16] [--threads N]

          --batch B / --seq T       B random sequences of T tokens per step (every position trained)
          --steps S                 timed optimizer steps, after W untimed ones (default 2)
          --random-layout           (synthetic models) random SMoA block layouts of the right sizes instead of SVDs
          --gemm-size N             size of the square GEMM timed for the peak (default 2048 on cpu, 8192 on cuda)
          --json                    last line: {"{"}"tokens_per_s": x, "share_of_gemm_peak": y, ...{"}"}

        {TrainServingBench.Usage}
        """;

    private static readonly string[] Options =
        ["model", "synthetic", "adapter-kind", "r", "num-blocks", "target-modules", "alpha", "batch", "seq", "steps", "warmup", "seed",
         "gemm-size", "device", "dtype", "threads"];

    public static int Run(string[] args)
    {
        if (args.Contains("--serving")) return TrainServingBench.Run(args);
        var a = CliArgs.Parse(args, Options, ["json", "random-layout"]);
        if (a.Positionals.Count > 0) throw new UsageException($"unexpected argument '{a.Positionals[0]}'");
        if (a.Has("model") == a.Has("synthetic")) throw new UsageException("give exactly one of --model DIR and --synthetic SPEC");
        if (a.Flag("random-layout") && a.Has("model")) throw new UsageException("--random-layout is for --synthetic models");
        var kind = TrainCommand.ParseMethod(a.Required("adapter-kind"));
        if (!a.Has("r")) throw new UsageException("--r is required");
        if (!a.Has("target-modules")) throw new UsageException("--target-modules is required");
        var config = TrainCommand.AdapterConfigFrom(a, kind, "alpha");
        int batch = Bounded(a, "batch", null, 1, 1 << 16), seq = Bounded(a, "seq", null, 2, 1 << 20);
        int steps = Bounded(a, "steps", null, 1, 100_000), warmup = Bounded(a, "warmup", 2, 0, 1000);
        ulong seed = TrainCommand.ParseSeed(a.Get("seed"));
        bool json = a.Flag("json");
        var log = json ? Console.Error : Console.Out;

        var loadOptions = ModelOptions.LoadOptions(a);
        var clock = Stopwatch.StartNew();
        using var model = a.Get("model") is { } dir ? LlamaModel.Load(dir, loadOptions) : SyntheticLlama.Create(ParseSynthetic(a.Get("synthetic")!), loadOptions);
        if (seq > model.Config.MaxPositionEmbeddings) throw new UsageException($"--seq {seq} exceeds the model's context ({model.Config.MaxPositionEmbeddings})");
        log.WriteLine($"model: {a.Get("model") ?? "synthetic " + a.Get("synthetic")} on {model.Device.type} {TorchRuntime.DtypeName(model.Dtype)} ({clock.Elapsed.TotalSeconds:F1} s)");

        LayoutStore? layouts = null;
        if (kind == AdapterKind.Smoa)
        {
            layouts = new LayoutStore(BaseModelView.From(model));
            if (a.Flag("random-layout")) PresetRandomLayouts(model, config, layouts, (int)seed);
        }
        clock.Restart();
        using var adapter = TrainableAdapter.Create(model, config, seed, layouts);
        log.WriteLine($"adapter: {adapter.ParameterCount:N0} parameters ({clock.Elapsed.TotalSeconds:F1} s to build{(layouts is null ? "" : $", {layouts.SvdCount} SVDs")})");

        var rng = new Random((int)(seed & int.MaxValue));
        var examples = Enumerable.Range(0, batch).Select(_ => new TokenizedExample(0,
            Enumerable.Range(0, seq).Select(_ => rng.Next(model.Config.VocabSize)).ToArray(), Enumerable.Repeat(true, seq).ToArray())).ToList();
        using var trainingBatch = TrainingBatch.Padded(examples, model.Device);
        var options = new TrainingOptions { BatchSize = batch, LearningRate = 1e-4, Decay = LearningRateDecay.Constant, WeightDecay = 0.01, Seed = seed };
        using var trainer = new Trainer(model, adapter, options);
        int gemmSize = Bounded(a, "gemm-size", model.Device.type == DeviceType.CUDA ? 8192 : 2048, 64, 65536);
        double peakBefore = MeasureGemmPeak(model.Device, model.Dtype, gemmSize);
        for (int i = 0; i < warmup; i++) trainer.Step([trainingBatch], options.LearningRate);
        Synchronize(model.Device);
        clock.Restart();
        double loss = 0;
        for (int i = 0; i < steps; i++) loss = trainer.Step([trainingBatch], options.LearningRate).Loss;
        Synchronize(model.Device);
        double seconds = clock.Elapsed.TotalSeconds;
        double tokensPerSecond = (double)batch * seq * steps / seconds;

        var c = model.Config;
        long matmulParameters = SyntheticLlama.ParameterCount(c) - (long)c.VocabSize * c.HiddenSize * (c.TieWordEmbeddings ? 0 : 1)   // minus the embedding table (a lookup)
                                - (2L * c.NumLayers + 1) * c.HiddenSize;                                                          // minus the norm gains
        double modelFlopsPerToken = 4.0 * matmulParameters + 12.0 * c.NumLayers * seq * c.NumHeads * c.HeadDim;
        double adapterFlopsPerToken = AdapterFlopsPerToken(model, config, adapter.Form, (long)batch * seq, layouts);
        double flopsPerToken = modelFlopsPerToken + adapterFlopsPerToken;
        double peak = Math.Max(peakBefore, MeasureGemmPeak(model.Device, model.Dtype, gemmSize));   // measured before and after: the better one
        double achieved = tokensPerSecond * flopsPerToken;

        log.WriteLine($"train: {tokensPerSecond:N0} tokens/s ({seconds / steps * 1000:F1} ms per step of {batch}x{seq}), last loss {loss:F3}");
        log.WriteLine($"arithmetic {achieved / 1e12:F3} TFLOP/s = {achieved / peak:P1} of the measured GEMM peak {peak / 1e12:F3} TFLOP/s ({gemmSize}x{gemmSize} {TorchRuntime.DtypeName(model.Dtype)}); " +
                      $"per token {modelFlopsPerToken / 1e6:N0} MFLOP model + {adapterFlopsPerToken / 1e6:N0} MFLOP adapter; model alone {tokensPerSecond * modelFlopsPerToken / peak:P1} of the peak");
        if (json)
        {
            var result = new Dictionary<string, object?>
            {
                ["tokens_per_s"] = Math.Round(tokensPerSecond, 1),
                ["step_seconds"] = Math.Round(seconds / steps, 4),
                ["flops_per_token"] = flopsPerToken,
                ["model_flops_per_token"] = modelFlopsPerToken,
                ["adapter_flops_per_token"] = adapterFlopsPerToken,
                ["tflops_per_s"] = Math.Round(achieved / 1e12, 4),
                ["gemm_peak_tflops_per_s"] = Math.Round(peak / 1e12, 4),
                ["share_of_gemm_peak"] = Math.Round(achieved / peak, 4),
                ["model_share_of_gemm_peak"] = Math.Round(tokensPerSecond * modelFlopsPerToken / peak, 4),
                ["gemm_size"] = gemmSize,
                ["adapter_kind"] = kind == AdapterKind.Smoa ? "smoa" : "lora",
                ["r"] = config.R,
                ["num_blocks"] = kind == AdapterKind.Smoa ? config.NumBlocks : null,
                ["smoa_training_form"] = kind == AdapterKind.Smoa ? (adapter.Form == SmoaTrainingForm.Auto ? (config.NumBlocks == 1 ? "folded" : "blockwise") : adapter.Form.ToString().ToLowerInvariant()) : null,
                ["target_modules"] = config.TargetModules.Select(ProjectionNames.ModuleName).ToArray(),
                ["adapter_parameters"] = adapter.ParameterCount,
                ["batch"] = batch,
                ["seq"] = seq,
                ["steps"] = steps,
                ["last_loss"] = Math.Round(loss, 4),
                ["device"] = model.Device.type.ToString().ToLowerInvariant(),
                ["dtype"] = TorchRuntime.DtypeName(model.Dtype),
                ["threads"] = get_num_threads(),
            };
            Console.WriteLine(JsonSerializer.Serialize(result));
        }
        return 0;
    }

    /// <summary>The adapter's multiply-adds ×2 per trained token (see the class summary); <paramref name="tokens"/> per step.</summary>
    private static double AdapterFlopsPerToken(LlamaModel model, AdapterConfig config, SmoaTrainingForm form, long tokens, LayoutStore? layouts)
    {
        bool folded = form == SmoaTrainingForm.Folded || form == SmoaTrainingForm.Auto && config.NumBlocks == 1;
        double total = 0;
        for (int layer = 0; layer < model.Config.NumLayers; layer++)
            foreach (var p in config.TargetModules)
            {
                var w = model.ProjectionWeight(layer, p);
                double m = w.shape[0], n = w.shape[1];
                if (config.Kind == AdapterKind.Lora) { total += 6.0 * config.R * (m + n); continue; }
                var layout = layouts!.Get(layer, p, config.NumBlocks);
                double blocks = folded ? m * n : Enumerable.Range(0, layout.K).Sum(k => (double)layout.Rows[k].Length * layout.Cols[k].Length);
                double formed = folded ? config.R * m * n : Enumerable.Range(0, layout.K).Sum(k => (double)config.BlockRanks[k] * layout.Rows[k].Length * layout.Cols[k].Length);
                total += 6.0 * blocks + 6.0 * formed / tokens;
            }
        return total;
    }

    /// <summary>The best of three rounds of square matrix products in the model's dtype on its device: 2n³ FLOPs each.</summary>
    private static double MeasureGemmPeak(Device device, ScalarType dtype, int n)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var x = randn([n, n], dtype: dtype, device: device);
        var y = randn([n, n], dtype: dtype, device: device);
        mm(x, y);
        Synchronize(device);
        double flops = 2.0 * n * n * n, best = 0;
        int reps = 1;
        var clock = Stopwatch.StartNew();
        mm(x, y);
        Synchronize(device);
        reps = (int)Math.Clamp(0.3 / Math.Max(1e-6, clock.Elapsed.TotalSeconds), 1, 1000);   // ~0.3 s per round
        for (int round = 0; round < 3; round++)
        {
            using var inner = NewDisposeScope();
            clock.Restart();
            for (int i = 0; i < reps; i++) mm(x, y);
            Synchronize(device);
            best = Math.Max(best, flops * reps / clock.Elapsed.TotalSeconds);
        }
        return best;
    }

    private static void Synchronize(Device device)
    {
        if (device.type == DeviceType.CUDA) cuda.synchronize(device);
    }

    /// <summary>Random row / column permutations split into the spec's block sizes (speed depends on the sizes only).</summary>
    private static void PresetRandomLayouts(LlamaModel model, AdapterConfig config, LayoutStore layouts, int seed)
    {
        var rng = new Random(seed);
        long[][] Split(int total)
        {
            var perm = Enumerable.Range(0, total).Select(i => (long)i).ToArray();
            rng.Shuffle(perm);
            var sizes = SmoaLayout.SplitSizes(total, config.NumBlocks);
            var blocks = new long[config.NumBlocks][];
            for (int k = 0, start = 0; k < config.NumBlocks; start += sizes[k], k++) blocks[k] = perm[start..(start + sizes[k])];
            return blocks;
        }
        for (int layer = 0; layer < model.Config.NumLayers; layer++)
            foreach (var p in config.TargetModules)
            {
                var w = model.ProjectionWeight(layer, p);
                int m = (int)w.shape[0], n = (int)w.shape[1];
                layouts.Preset(layer, p, SmoaLayout.FromIndices(m, n, Split(m), Split(n), "random layout"));
            }
    }

    private static ModelConfig ParseSynthetic(string spec)
    {
        try { return SyntheticLlama.ParseSpec(spec); }
        catch (ArgumentException e) { throw new UsageException("--synthetic: " + e.Message); }
    }

    private static int Bounded(CliArgs a, string name, int? fallback, int min, int max)
    {
        int v = fallback is { } f ? a.GetInt(name, f) : a.RequiredInt(name);
        return v >= min && v <= max ? v : throw new UsageException($"--{name} must be between {min} and {max}");
    }
}
