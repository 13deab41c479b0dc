using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using SmoaServe.Engine.Model;
using SmoaServe.Engine.Runner;
using SmoaServe.Engine.Runtime;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace SmoaServe.Cli.Commands;

/// <summary>
/// `smoa bench bandwidth`: the weight-streaming bandwidth of this machine, measured as a GEMV (F.linear of one row)
/// over a matrix much larger than the caches, the way a decode step reads its weights.
/// `smoa bench step`: where the time of one decode step goes (weight GEMVs alone vs the whole step), base model.
/// </summary>
public static class StepBench
{
    public const string Usage = """
        usage: smoa bench bandwidth [--mb 400] [--dtype float32|bfloat16] [--threads N] [--seconds 3] [--kernel] [--json]
          GB/s of weights an F.linear GEMV (one input row) streams from a matrix of --mb megabytes (median of the
          timed calls); the decode benches report their weight traffic as a share of this figure. --kernel: the same
          product through the CPU decode kernel with float32, bf16 and int8 storage.
        usage: smoa bench precision (--model DIR | --synthetic SPEC) [--tokens 64] [--seed 1] [--json]
          bf16 and int8 weight storage against float32 on one random sequence: max |logit error| (absolute and over
          the largest |logit|), top-1 agreement per position (teacher-forced), greedy continuations (identical prefix).
        usage: smoa bench step --synthetic SPEC [--batch 1] [--steps 32] [--weights-dtype ...] [--threads N] [--decode-only] [--json]
          one decode step taken apart: the weight GEMVs alone (the same F.linear calls on the same shapes), the model
          runner's decode call (inputs, masks, host copy of the logits), with the CPU kernel off (F.linear) and on,
          alternated step by step; medians over --steps. --decode-only: the decode call with the kernel, nothing else.
        """;

    /// <summary>Median seconds per GEMV and the GB/s it streams.</summary>
    public static (double Seconds, double GBps) MeasureBandwidth(long bytes, ScalarType dtype, double seconds = 3)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        long elementSize = dtype == ScalarType.Float32 ? 4 : 2;
        long cols = 4096, rows = Math.Max(1, bytes / (cols * elementSize));
        var w = torch.randn([rows, cols], ScalarType.Float32).to_type(dtype);
        var x = torch.randn([1, cols], ScalarType.Float32).to_type(dtype);
        for (int i = 0; i < 3; i++) F.linear(x, w).Dispose();
        var times = new List<double>();
        var total = Stopwatch.StartNew();
        while (total.Elapsed.TotalSeconds < seconds || times.Count < 5)
        {
            var t = Stopwatch.StartNew();
            F.linear(x, w).Dispose();
            times.Add(t.Elapsed.TotalSeconds);
        }
        double median = Median(times);
        return (median, rows * cols * elementSize / median / 1e9);
    }

    /// <summary>The same one-row product through <see cref="CpuGemv"/> over a float32 matrix of <paramref name="bytes"/> stored as <paramref name="storage"/>.</summary>
    public static (double Seconds, double GBps, long Bytes) MeasureKernel(long bytes, WeightStorage storage, double seconds = 3)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        long cols = 4096, rows = Math.Max(1, bytes / (cols * 4));
        var w = torch.randn([rows, cols], ScalarType.Float32);
        using var kernel = new CpuGemv(w, null, storage);
        var x = torch.randn([1, cols], ScalarType.Float32);
        for (int i = 0; i < 3; i++) kernel.Forward(x).Dispose();
        var times = new List<double>();
        var total = Stopwatch.StartNew();
        while (total.Elapsed.TotalSeconds < seconds || times.Count < 5)
        {
            var t = Stopwatch.StartNew();
            kernel.Forward(x).Dispose();
            times.Add(t.Elapsed.TotalSeconds);
        }
        double median = Median(times);
        return (median, kernel.WeightBytes / median / 1e9, kernel.WeightBytes);
    }

    public static int RunBandwidth(string[] args)
    {
        var a = CliArgs.Parse(args, ["mb", "dtype", "threads", "seconds"], ["json", "kernel"]);
        int threads = a.GetInt("threads", 0);
        if (threads < 0 || threads > ModelOptions.MaxThreads) throw new UsageException($"--threads must be between 1 and {ModelOptions.MaxThreads}");
        TorchRuntime.PreferPassiveOpenMpWait();
        TorchRuntime.ConfigureThreads(threads);
        int mb = a.GetInt("mb", 400);
        if (mb < 1 || mb > 16384) throw new UsageException("--mb must be between 1 and 16384");
        double seconds = a.GetDouble("seconds", 3);
        if (!(seconds > 0 && seconds <= 600)) throw new UsageException("--seconds must be in (0, 600]");
        ScalarType dtype;
        try { dtype = TorchRuntime.ParseDtype(a.Get("dtype") ?? "float32"); }
        catch (ArgumentException e) { throw new UsageException("--dtype: " + e.Message); }
        var (s, gbps) = MeasureBandwidth(mb * 1_000_000L, dtype, seconds);
        var load = LoadAverage();
        Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"GEMV over {mb} MB of {TorchRuntime.DtypeName(dtype)}: {s * 1000:F2} ms = {gbps:F1} GB/s ({torch.get_num_threads()} threads, load average {load})"));
        var result = new Dictionary<string, object>
        {
            ["gemv_gb_per_s"] = Math.Round(gbps, 2), ["gemv_ms"] = Math.Round(s * 1000, 3), ["matrix_mb"] = mb,
            ["dtype"] = TorchRuntime.DtypeName(dtype), ["threads"] = torch.get_num_threads(), ["load_average"] = load,
        };
        if (a.Flag("kernel"))
            foreach (var storage in Enum.GetValues<WeightStorage>())
            {
                var (ks, kgbps, kbytes) = MeasureKernel(mb * 1_000_000L, storage, seconds);
                Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"CPU decode kernel, {storage} storage ({kbytes / 1e6:F0} MB): {ks * 1000:F2} ms = {kgbps:F1} GB/s"));
                result["kernel_" + storage.ToString().ToLowerInvariant() + "_ms"] = Math.Round(ks * 1000, 3);
                result["kernel_" + storage.ToString().ToLowerInvariant() + "_gb_per_s"] = Math.Round(kgbps, 2);
            }
        if (a.Flag("json")) Console.WriteLine(JsonSerializer.Serialize(result));
        return 0;
    }

    /// <summary>/proc/loadavg's 1-minute figure ("?" where there is none).</summary>
    public static string LoadAverage()
    {
        try { return File.ReadAllText("/proc/loadavg").Split(' ')[0]; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return "?"; }
    }

    public static double Median(IEnumerable<double> values)
    {
        var s = values.OrderBy(v => v).ToArray();
        return s.Length == 0 ? double.NaN : s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }

    public static int RunStep(string[] args)
    {
        var a = CliArgs.Parse(args, [.. ModelOptions.ValueOptions, "synthetic", "batch", "steps", "prompt-len"], ["json", "decode-only"]);
        var config = SyntheticLlama.ParseSpec(a.Required("synthetic"));
        using var engine = ModelOptions.Engine(a, SyntheticLlama.Create(config, ModelOptions.LoadOptions(a)));
        var model = engine.Model;
        int b = a.GetInt("batch", 1), steps = a.GetInt("steps", 32), promptLen = a.GetInt("prompt-len", 16);
        if (b < 1 || b > 4096 || steps < 1 || steps > 100_000 || promptLen < 1 || promptLen > 100_000) throw new UsageException("--batch, --steps, --prompt-len out of range");
        using var runner = engine.CreateRunner(b, promptLen + 2 * (steps + 2) + 8);
        var rng = new Random(1);
        var next = new int[b];
        for (int i = 0; i < b; i++)
            next[i] = ArgMax(runner.Prefill(i, Enumerable.Range(0, promptLen).Select(_ => rng.Next(config.VocabSize)).ToArray(), 0, null));

        // the same step with the CPU kernel off (F.linear everywhere) and on, alternated step by step
        bool decodeOnly = a.Flag("decode-only");
        var modes = model.LmHeadKernel is null ? new[] { false } : decodeOnly ? new[] { true } : new[] { false, true };
        var gemv = modes.Select(_ => new List<double>()).ToArray();
        var decode = modes.Select(_ => new List<double>()).ToArray();
        var gemvCpu = modes.Select(_ => new List<double>()).ToArray();
        var decodeCpu = modes.Select(_ => new List<double>()).ToArray();
        var process = Process.GetCurrentProcess();
        double Cpu() { process.Refresh(); return process.TotalProcessorTime.TotalSeconds; }
        using var noGrad = torch.no_grad();
        for (int step = 0; step < steps + 2; step++)
            for (int mode = 0; mode < modes.Length; mode++)
            {
                CpuGemv.Enabled = modes[mode];
                // the weight GEMVs alone: every projection group of every layer and lm_head, same calls, same row count
                double c0 = Cpu();
                var t = Stopwatch.StartNew();
                if (!decodeOnly)
                using (var scope = torch.NewDisposeScope())
                {
                    var xh = torch.ones([b, 1, config.HiddenSize], model.Dtype);
                    var xf = torch.ones([b, 1, config.IntermediateSize], model.Dtype);
                    var xa = torch.ones([b, 1, config.NumHeads * config.HeadDim], model.Dtype);
                    for (int l = 0; l < model.Layers.Count; l++)
                    {
                        model.ProjectionGroupForward(l, ProjectionGroup.Qkv, xh);
                        model.ProjectionGroupForward(l, ProjectionGroup.O, xa);
                        model.ProjectionGroupForward(l, ProjectionGroup.GateUp, xh);
                        model.ProjectionGroupForward(l, ProjectionGroup.Down, xf);
                    }
                    model.LmHeadForward(xh);
                }
                double g = t.Elapsed.TotalSeconds;
                double c1 = Cpu();
                t.Restart();
                var rows = Enumerable.Range(0, b).Select(i => new DecodeRow(i, next[i], runner.SlotLength(i), null)).ToList();
                var logits = runner.Decode(rows);
                for (int i = 0; i < b; i++) next[i] = ArgMax(logits[i]);
                double d = t.Elapsed.TotalSeconds;
                double c2 = Cpu();
                if (step >= 2) { gemv[mode].Add(g); decode[mode].Add(d); gemvCpu[mode].Add(c1 - c0); decodeCpu[mode].Add(c2 - c1); }
            }
        CpuGemv.Enabled = true;
        double bandwidth = decodeOnly ? double.NaN : MeasureBandwidth(400_000_000, ScalarType.Float32, 2).GBps;
        long bytes = SyntheticLlama.WeightBytesReadPerToken(config, ScalarType.Float32);
        long streamed = model.LmHeadKernel is null ? bytes : model.StreamedWeightBytes;
        var load = LoadAverage();
        var result = new Dictionary<string, object> { ["batch"] = b, ["threads"] = torch.get_num_threads(), ["load_average"] = load,
            ["weights"] = model.WeightStorage.ToString().ToLowerInvariant() };
        for (int mode = 0; mode < modes.Length; mode++)
        {
            double gm = Median(gemv[mode]), dm = Median(decode[mode]);
            string name = modes[mode] ? "kernel" : "linear";
            long read = modes[mode] ? streamed : bytes;
            if (decodeOnly)
                Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"batch {b}, {name}: decode step {dm * 1000:F2} ms ({b / dm:F1} tok/s, {read / dm / 1e9:F1} GB/s of weights); CPU time {Median(decodeCpu[mode]) * 1000:F2} ms [{torch.get_num_threads()} threads, load average {load}]"));
            else
            Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"batch {b}, {name}: decode step {dm * 1000:F2} ms ({b / dm:F1} tok/s); weight GEMVs alone {gm * 1000:F2} ms ({read / gm / 1e9:F1} GB/s); " +
                $"the rest {(dm - gm) * 1000:F2} ms ({(dm - gm) / dm:P0} of the step); CPU time: step {Median(decodeCpu[mode]) * 1000:F2} ms, GEMVs {Median(gemvCpu[mode]) * 1000:F2} ms " +
                $"[{torch.get_num_threads()} threads, load average {load}]"));
            result[name + "_step_cpu_ms"] = Math.Round(Median(decodeCpu[mode]) * 1000, 3);
            result[name + "_gemv_cpu_ms"] = Math.Round(Median(gemvCpu[mode]) * 1000, 3);
            if (!decodeOnly)
                Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"  weights streamed per step {read / dm / 1e9:F1} GB/s = {read / dm / 1e9 / bandwidth:P0} of the GEMV bandwidth measured in this run ({bandwidth:F1} GB/s, smoa bench bandwidth)"));
            result[name + "_step_ms"] = Math.Round(dm * 1000, 3);
            if (!decodeOnly) result[name + "_share_of_bandwidth"] = Math.Round(read / dm / 1e9 / bandwidth, 3);
            result[name + "_gemv_ms"] = Math.Round(gm * 1000, 3);
            result[name + "_tokens_per_s"] = Math.Round(b / dm, 1);
        }
        if (!decodeOnly) result["bandwidth_gb_per_s"] = Math.Round(bandwidth, 2);
        if (a.Flag("json")) Console.WriteLine(JsonSerializer.Serialize(result));
        return 0;
    }

    public static int RunPrecision(string[] args)
    {
        var a = CliArgs.Parse(args, ["model", "synthetic", "threads", "tokens", "seed"], ["json"]);
        if (a.Has("model") == a.Has("synthetic")) throw new UsageException("give exactly one of --model DIR and --synthetic SPEC");
        int tokens = a.GetInt("tokens", 64), seed = a.GetInt("seed", 1);
        if (tokens < 2 || tokens > 4096) throw new UsageException("--tokens must be between 2 and 4096");
        var baseOptions = ModelOptions.LoadOptions(a);
        LlamaModel Load(WeightStorage w) => a.Get("model") is { } dir
            ? LlamaModel.Load(dir, baseOptions with { Weights = w })
            : SyntheticLlama.Create(SyntheticLlama.ParseSpec(a.Required("synthetic")), baseOptions with { Weights = w });
        using var reference = Load(WeightStorage.Float32);
        var rng = new Random(seed);
        var ids = Enumerable.Range(0, tokens).Select(_ => rng.Next(reference.Config.VocabSize)).ToArray();
        var result = new Dictionary<string, object> { ["tokens"] = tokens, ["model"] = a.Get("model") ?? "synthetic " + a.Get("synthetic") };
        var (refLogits, refGreedy) = Evaluate(reference, ids);
        foreach (var storage in new[] { WeightStorage.BFloat16, WeightStorage.Int8 })
        {
            using var model = Load(storage);
            var (logits, greedy) = Evaluate(model, ids);
            double maxErr = 0, maxRef = 0;
            int agree = 0;
            for (int t = 0; t < tokens; t++)
            {
                for (int v = 0; v < logits[t].Length; v++)
                {
                    maxErr = Math.Max(maxErr, Math.Abs(logits[t][v] - refLogits[t][v]));
                    maxRef = Math.Max(maxRef, Math.Abs(refLogits[t][v]));
                }
                if (ArgMax(logits[t]) == ArgMax(refLogits[t])) agree++;
            }
            int prefix = 0;
            while (prefix < greedy.Length && greedy[prefix] == refGreedy[prefix]) prefix++;
            string name = storage == WeightStorage.BFloat16 ? "bf16" : "int8";
            Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{name}: max |logit error| {maxErr:E2} ({maxErr / maxRef:P2} of max |logit| {maxRef:F2}); top-1 agreement {agree}/{tokens}; " +
                $"greedy continuation identical for {prefix}/{greedy.Length} tokens; weights streamed {model.StreamedWeightBytes / 1e6:F1} MB vs {reference.StreamedWeightBytes / 1e6:F1} MB"));
            result[name + "_max_abs_logit_error"] = maxErr;
            result[name + "_relative_logit_error"] = maxErr / maxRef;
            result[name + "_top1_agreement"] = (double)agree / tokens;
            result[name + "_greedy_identical_prefix"] = prefix;
        }
        result["greedy_tokens"] = refGreedy.Length;
        if (a.Flag("json")) Console.WriteLine(JsonSerializer.Serialize(result));
        return 0;
    }

    /// <summary>Teacher-forced logits of every position (through the KV cache, as decode computes them) and a greedy continuation.</summary>
    private static (float[][] Logits, int[] Greedy) Evaluate(LlamaModel model, int[] ids)
    {
        int greedyTokens = Math.Min(32, ids.Length);
        using var runner = new ModelRunner(model, 1, ids.Length + greedyTokens + 1);
        var logits = new float[ids.Length][];
        logits[0] = runner.Prefill(0, ids.AsSpan(0, 1), 0, null);
        for (int t = 1; t < ids.Length; t++) logits[t] = runner.Decode([new DecodeRow(0, ids[t], t, null)])[0];
        runner.FreeSlot(0);
        var prompt = ids.AsSpan(0, ids.Length / 2);
        var greedy = new int[greedyTokens];
        greedy[0] = ArgMax(runner.Prefill(0, prompt, 0, null));
        for (int i = 1; i < greedyTokens; i++) greedy[i] = ArgMax(runner.Decode([new DecodeRow(0, greedy[i - 1], prompt.Length + i - 1, null)])[0]);
        return (logits, greedy);
    }

    private static int ArgMax(float[] v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++) if (v[i] > v[best]) best = i;
        return best;
    }
}
