using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Adapters.Smoa;
using SmoaServe.Engine.Model;
using SmoaServe.Engine.Runner;
using SmoaServe.Engine.Runtime;

namespace SmoaServe.Cli.Commands;

/// <summary>
/// `smoa bench decode`: decode throughput of one batch three ways —
///   base:  no adapters;
///   mixed: row i uses adapter i mod N, all rows in one batch (on-the-fly shared-anchor SMoA / gathered LoRA);
///   swap:  the naive way: per adapter, merge ΔW into the weights, decode its rows alone, unmerge.
/// </summary>
public sealed class BenchCommand : ICommand
{
    public string Name => "bench";
    public string Summary => "benchmarks: decode (base vs mixed adapters vs merge-and-swap), serve (HTTP load), hostile (attacks), structured (constrained decoding)";
    public string Usage => $"""
        usage: smoa bench decode (--model DIR | --synthetic {SyntheticLlama.SpecHelp})
                 --adapter-kind smoa|lora --r R --num-blocks K --target-modules a,b,... --adapters N --batch B --steps S
                 [--device cpu|cuda] [--dtype float32|bfloat16] [--threads N] [--json]
                 [--prompt-len P] [--warmup W] [--rounds R] [--alpha A] [--data DIR] [--seed S] [--no-swap] [--random-layout]
                 [--smoa-form anchored|folded]

          --adapter-kind smoa|lora  random non-zero adapters of this kind (--num-blocks is ignored for lora)
          --target-modules LIST     e.g. q_proj,k_proj,v_proj,o_proj (or 'all' for the seven projections)
          --adapters N              number of distinct adapters; row i uses adapter i mod N
          --batch B / --steps S     B sequences, S timed decode steps each (after W warm-up steps, default 4)
          --prompt-len P            prompt tokens prefilled per sequence before decoding (default 16)
          --rounds R                rounds of interleaved base/mixed steps; all are averaged (default 2)
          --random-layout           (synthetic models) random block layouts of the right sizes instead of SVDs
          --smoa-form F             anchored (shared-anchor GEMM per module) or folded (HiRA form, one GEMM per
                                    projection group); default anchored on cpu, folded on cuda
          --data DIR                SMoA layout cache directory (skips the SVDs on the next run)
          --json                    last line: {"{"}"base_tokens_per_s": x, "mixed_tokens_per_s": y, "swap_tokens_per_s": z, ...{"}"}
        {ModelOptions.Help}

        {ServeBench.Usage}

        {TrainBench.Usage}
        {Hostile.HostileBench.Usage}
        {StructuredOutputBench.Usage}
        {StepBench.Usage}
        """;

    private static readonly string[] Options =
        ["model", "synthetic", "device", "dtype", "threads", "adapter-kind", "r", "num-blocks", "target-modules", "adapters",
         "batch", "steps", "prompt-len", "warmup", "rounds", "alpha", "data", "seed", "smoa-form", "weights-dtype"];

    public int Run(string[] args)
    {
        if (args.Length > 0 && args[0] == "serve") return ServeBench.Run(args[1..]);
        if (args.Length > 0 && args[0] == "train") return TrainBench.Run(args[1..]);
        if (args.Length > 0 && args[0] == "hostile") return Hostile.HostileBench.Run(args[1..]);
        if (args.Length > 0 && args[0] == "structured") return StructuredOutputBench.Run(args[1..]);
        if (args.Length > 0 && args[0] == "bandwidth") return StepBench.RunBandwidth(args[1..]);
        if (args.Length > 0 && args[0] == "step") return StepBench.RunStep(args[1..]);
        if (args.Length > 0 && args[0] == "precision") return StepBench.RunPrecision(args[1..]);
        var a = CliArgs.Parse(args, Options, ["json", "no-swap", "random-layout"]);
        if (a.Positionals.Count != 1 || a.Positionals[0] != "decode") throw new UsageException("smoa bench decode|serve|train|hostile|structured|bandwidth|step|precision ...");
        var s = Settings.From(a);
        var log = s.Json ? Console.Error : Console.Out;

        var load = Stopwatch.StartNew();
        using var engine = ModelOptions.Engine(a, s.ModelDir is null ? SyntheticLlama.Create(ParseSynthetic(s.Synthetic!), ModelOptions.LoadOptions(a)) : null, s.DataDir);
        var model = engine.Model;
        if (model.WeightStorage != WeightStorage.Float32 && !s.NoSwap)
            throw new UsageException("--weights-dtype bf16|int8: the swap baseline merges into float32 weights the kernel does not stream; add --no-swap");
        log.WriteLine($"model: {(s.ModelDir ?? "synthetic " + s.Synthetic)} on {model.Device.type} {TorchRuntime.DtypeName(model.Dtype)} ({load.Elapsed.TotalSeconds:F1} s)");

        var (view, layouts, registry) = (engine.View, engine.Layouts, engine.Adapters);
        var definitions = CreateAdapters(s, view, registry, log, out double layoutSeconds, out double registerSeconds);
        try
        {
            var info = registry.List()[0];
            long adapterParams = info.ParameterCount;
            using var runner = engine.CreateRunner(2 * s.Batch, s.PromptLen + s.Warmup + s.Steps + 2);
            var bench = new DecodeBench(runner, s);

            var baseIds = Enumerable.Repeat<string?>(null, s.Batch).ToArray();
            var mixedIds = Enumerable.Range(0, s.Batch).Select(i => (string?)AdapterName(i % s.Adapters)).ToArray();
            double baseTps = 0, mixedTps = 0, basePrefill = 0, mixedPrefill = 0;
            for (int round = 0; round < s.Rounds; round++)
            {
                var r = bench.RunInterleaved(baseIds, mixedIds);
                log.WriteLine($"round {round + 1}: base {r.BaseDecode:F1} tok/s, mixed {r.MixedDecode:F1} tok/s ({r.MixedDecode / r.BaseDecode:P0} of base)");
                // all rounds count (harmonic mean = total tokens / total time): no picking of a lucky round
                baseTps += 1 / r.BaseDecode; mixedTps += 1 / r.MixedDecode; basePrefill += 1 / r.BasePrefill; mixedPrefill += 1 / r.MixedPrefill;
            }
            baseTps = s.Rounds / baseTps; mixedTps = s.Rounds / mixedTps; basePrefill = s.Rounds / basePrefill; mixedPrefill = s.Rounds / mixedPrefill;
            double swapTps = double.NaN, mergeSeconds = double.NaN;
            if (!s.NoSwap)
            {
                (swapTps, mergeSeconds) = bench.RunSwap(definitions, model, layouts);
                log.WriteLine($"swap: {swapTps:F1} tok/s (merge + unmerge {mergeSeconds:F2} s of it)");
            }

            var result = new Dictionary<string, object?>
            {
                ["base_tokens_per_s"] = Round(baseTps),
                ["mixed_tokens_per_s"] = Round(mixedTps),
                ["swap_tokens_per_s"] = double.IsNaN(swapTps) ? null : Round(swapTps),
                ["mixed_over_base"] = Round(mixedTps / baseTps, 3),
                ["mixed_over_swap"] = double.IsNaN(swapTps) ? null : Round(mixedTps / swapTps, 2),
                ["base_prefill_tokens_per_s"] = Round(basePrefill),
                ["mixed_prefill_tokens_per_s"] = Round(mixedPrefill),
                ["swap_merge_seconds"] = double.IsNaN(mergeSeconds) ? null : Round(mergeSeconds, 3),
                ["adapter_kind"] = s.Kind == AdapterKind.Smoa ? "smoa" : "lora",
                ["r"] = s.R,
                ["num_blocks"] = s.Kind == AdapterKind.Smoa ? s.K : null,
                ["smoa_form"] = s.Kind == AdapterKind.Smoa ? registry.Options.SmoaForm.ToString().ToLowerInvariant() : null,
                ["target_modules"] = s.Targets.Select(ProjectionNames.ModuleName).ToArray(),
                ["adapters"] = s.Adapters,
                ["batch"] = s.Batch,
                ["steps"] = s.Steps,
                ["prompt_len"] = s.PromptLen,
                ["adapter_parameters"] = adapterParams,
                ["adapter_bytes"] = info.Bytes,
                ["adapter_bytes_unpadded"] = adapterParams * ElementSize(model.Dtype),
                ["anchor_bytes_shared"] = registry.AnchorBytes,
                ["layout_svd_count"] = layouts.SvdCount,
                ["layout_seconds"] = Round(layoutSeconds, 2),
                ["register_seconds_per_adapter"] = Round(registerSeconds / s.Adapters, 4),
                ["device"] = model.Device.type.ToString().ToLowerInvariant(),
                ["dtype"] = TorchRuntime.DtypeName(model.Dtype),
                ["threads"] = TorchSharp.torch.get_num_threads(),
            };
            log.WriteLine($"adapter: {adapterParams:N0} parameters, {info.Bytes:N0} bytes on the device each; shared anchors {registry.AnchorBytes:N0} bytes");
            log.WriteLine($"mixed = {mixedTps / baseTps:P1} of base" + (double.IsNaN(swapTps) ? "" : $", {mixedTps / swapTps:F1}x swap"));
            if (s.Json) Console.WriteLine(JsonSerializer.Serialize(result));
            return 0;
        }
        finally
        {
            foreach (var d in definitions) d.Dispose();
        }
    }

    private static string AdapterName(int i) => $"bench-{i}";

    /// <summary>Builds and registers N random adapters; the first registration computes the layouts (timed apart).</summary>
    private static List<AdapterDefinition> CreateAdapters(Settings s, BaseModelView view, AdapterRegistry registry, TextWriter log,
        out double layoutSeconds, out double registerSeconds)
    {
        var config = s.Kind == AdapterKind.Smoa ? AdapterConfig.Smoa(s.R, s.K, s.Alpha, s.Targets) : AdapterConfig.Lora(s.R, s.Alpha, s.Targets);
        var definitions = new List<AdapterDefinition>();
        var layoutWatch = Stopwatch.StartNew();
        if (s.Kind == AdapterKind.Smoa && s.RandomLayout)
            PresetRandomLayouts(s, view, registry.Layouts);
        if (s.Kind == AdapterKind.Smoa)
            for (int layer = 0; layer < view.LayerCount; layer++)
                foreach (var p in s.Targets) registry.Layouts.Get(layer, p, s.K);
        layoutSeconds = layoutWatch.Elapsed.TotalSeconds;
        if (s.Kind == AdapterKind.Smoa)
            log.WriteLine($"layouts: {registry.Layouts.SvdCount} SVDs, {registry.Layouts.DiskHits} from the cache ({layoutSeconds:F1} s)");
        var registerWatch = new Stopwatch();
        for (int i = 0; i < s.Adapters; i++)
        {
            var d = SyntheticAdapters.Create(view, config, s.Seed + i);
            definitions.Add(d);
            registerWatch.Start();
            registry.Add(AdapterName(i), d);
            registerWatch.Stop();
        }
        registerSeconds = registerWatch.Elapsed.TotalSeconds;
        return definitions;
    }

    /// <summary>Random row/column permutations split into the spec's block sizes: what an SVD layout costs to serve, without the SVDs.</summary>
    private static void PresetRandomLayouts(Settings s, BaseModelView view, LayoutStore layouts)
    {
        var rng = new Random(s.Seed);
        long[][] Split(int total) 
        {
            var perm = Enumerable.Range(0, total).Select(i => (long)i).ToArray();
            rng.Shuffle(perm);
            var sizes = SmoaLayout.SplitSizes(total, s.K);
            var blocks = new long[s.K][];
            for (int k = 0, start = 0; k < s.K; start += sizes[k], k++) blocks[k] = perm[start..(start + sizes[k])];
            return blocks;
        }
        for (int layer = 0; layer < view.LayerCount; layer++)
            foreach (var p in s.Targets)
            {
                var (m, n) = view.Shape(layer, p);
                layouts.Preset(layer, p, SmoaLayout.FromIndices(m, n, Split(m), Split(n), "random layout"));
            }
    }

    private static Engine.Checkpoints.ModelConfig ParseSynthetic(string spec)
    {
        try { return SyntheticLlama.ParseSpec(spec); }
        catch (ArgumentException e) { throw new UsageException("--synthetic: " + e.Message); }
    }

    private static double Round(double v, int digits = 1) => Math.Round(v, digits);

    private static int ElementSize(TorchSharp.torch.ScalarType t) => t is TorchSharp.torch.ScalarType.Float32 ? 4 : 2;

    private sealed record Settings(
        string? ModelDir, string? Synthetic, AdapterKind Kind, int R, int K, IReadOnlyList<Projection> Targets, int Adapters,
        int Batch, int Steps, int PromptLen, int Warmup, int Rounds, double Alpha, string? DataDir, int Seed, bool Json, bool NoSwap, bool RandomLayout,
        SmoaForm? SmoaForm)
    {
        public static Settings From(CliArgs a)
        {
            if (a.Has("model") == a.Has("synthetic")) throw new UsageException("give exactly one of --model DIR and --synthetic SPEC");
            var kind = a.Required("adapter-kind") switch
            {
                "smoa" => AdapterKind.Smoa,
                "lora" => AdapterKind.Lora,
                var other => throw new UsageException($"--adapter-kind: '{other}' is not smoa or lora"),
            };
            int Positive(string name, int? fallback = null, int max = 1 << 20)
            {
                int v = fallback is { } f ? a.GetInt(name, f) : a.RequiredInt(name);
                return v >= 1 && v <= max ? v : throw new UsageException($"--{name} must be between 1 and {max}");
            }
            int r = Positive("r", null, AdapterConfig.MaxRank);
            int k = kind == AdapterKind.Smoa ? Positive("num-blocks", null, AdapterConfig.MaxBlocks) : a.GetInt("num-blocks", 1);
            string targetList = a.Required("target-modules");
            var targets = targetList == "all" ? Enum.GetValues<Projection>().ToList()
                : targetList.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(t =>
                    ProjectionNames.TryParse(t, out var p) ? p : throw new UsageException($"--target-modules: '{t}' is not q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj or down_proj")).Distinct().ToList();
            if (targets.Count == 0) throw new UsageException("--target-modules is empty");
            return new Settings(a.Get("model"), a.Get("synthetic"), kind, r, k, targets,
                Positive("adapters", null, 4096), Positive("batch", null, 4096), Positive("steps", null, 100_000),
                Positive("prompt-len", 16, 100_000), a.GetInt("warmup", 4) is var w and >= 0 ? w : throw new UsageException("--warmup must be >= 0"),
                Positive("rounds", 2, 100), a.GetDouble("alpha", 2.0 * r), a.Get("data"), a.GetInt("seed", 1), a.Flag("json"), a.Flag("no-swap"),
                a.Flag("random-layout") && !a.Has("model") ? true : a.Flag("random-layout") ? throw new UsageException("--random-layout is for --synthetic models") : false,
                ModelOptions.SmoaForm(a));
        }
    }

    /// <summary>Prefills B sequences and times S decode steps, greedy, on the runner's slots 0..B-1.</summary>
    private sealed class DecodeBench(ModelRunner runner, Settings s)
    {
        private int[] Prompt(int row)
        {
            var rng = new Random(s.Seed * 7919 + row);
            return Enumerable.Range(0, s.PromptLen).Select(_ => rng.Next(runner.VocabSize)).ToArray();
        }

        /// <summary>
        /// Base rows (slots 0..B-1) and mixed rows (slots B..2B-1) decoded step by step alternately, each step timed on its
        /// own, so both see the same background load on a shared machine. Returns tokens/s of each and of their prefills.
        /// </summary>
        public (double BaseDecode, double MixedDecode, double BasePrefill, double MixedPrefill) RunInterleaved(IReadOnlyList<string?> baseIds, IReadOnlyList<string?> mixedIds)
        {
            int b = baseIds.Count;
            var baseRows = Enumerable.Range(0, b).ToArray();
            var mixedRows = Enumerable.Range(b, b).ToArray();
            var watch = Stopwatch.StartNew();
            var baseNext = Prefill(baseRows, baseIds);
            double basePrefill = watch.Elapsed.TotalSeconds;
            watch.Restart();
            var mixedNext = Prefill(mixedRows, mixedIds);
            double mixedPrefill = watch.Elapsed.TotalSeconds;
            for (int i = 0; i < s.Warmup; i++) { Decode(baseRows, baseIds, baseNext, 1); Decode(mixedRows, mixedIds, mixedNext, 1); }
            double baseSeconds = 0, mixedSeconds = 0;
            for (int step = 0; step < s.Steps; step++)
            {
                bool baseFirst = step % 2 == 0;
                for (int half = 0; half < 2; half++)
                {
                    bool isBase = baseFirst == (half == 0);
                    watch.Restart();
                    if (isBase) Decode(baseRows, baseIds, baseNext, 1); else Decode(mixedRows, mixedIds, mixedNext, 1);
                    if (isBase) baseSeconds += watch.Elapsed.TotalSeconds; else mixedSeconds += watch.Elapsed.TotalSeconds;
                }
            }
            foreach (int r in baseRows.Concat(mixedRows)) runner.FreeSlot(r);
            return (b * s.Steps / baseSeconds, b * s.Steps / mixedSeconds, b * s.PromptLen / basePrefill, b * s.PromptLen / mixedPrefill);
        }

        /// <summary>The naive baseline: per adapter, merge into the weights, prefill and decode its rows alone, unmerge.
        /// Timed: merge + decode + unmerge (prefill excluded, as for the other two). Returns (tokens/s, merge seconds).</summary>
        public (double Decode, double MergeSeconds) RunSwap(List<AdapterDefinition> adapters, LlamaModel model, LayoutStore layouts)
        {
            // warm-up: one swap cycle, untimed
            var warm = AdapterMerge.MergeInPlace(adapters[0], model.ProjectionWeight, layouts);
            var warmRows = new[] { 0 };
            Decode(warmRows, [null], Prefill(warmRows, [null]), Math.Max(1, s.Warmup));
            runner.FreeSlot(0);
            AdapterMerge.Unmerge(warm);

            var total = new Stopwatch();
            var merging = new Stopwatch();
            long tokens = 0;
            for (int i = 0; i < s.Adapters; i++)
            {
                var rows = Enumerable.Range(0, s.Batch).Where(r => r % s.Adapters == i).ToArray();
                if (rows.Length == 0) continue;
                var none = new string?[rows.Length];
                total.Start(); merging.Start();
                var merged = AdapterMerge.MergeInPlace(adapters[i], model.ProjectionWeight, layouts);
                merging.Stop(); total.Stop();
                var next = Prefill(rows, none);
                total.Start();
                Decode(rows, none, next, s.Steps);
                merging.Start();
                AdapterMerge.Unmerge(merged);
                merging.Stop(); total.Stop();
                tokens += (long)rows.Length * s.Steps;
                foreach (int r in rows) runner.FreeSlot(r);
            }
            return (tokens / total.Elapsed.TotalSeconds, merging.Elapsed.TotalSeconds);
        }

        private int[] Prefill(int[] rows, IReadOnlyList<string?> adapterIds)
        {
            var next = new int[rows.Length];
            for (int i = 0; i < rows.Length; i++) next[i] = ArgMax(runner.Prefill(rows[i], Prompt(rows[i]), 0, adapterIds[i]));
            return next;
        }

        private void Decode(int[] rows, IReadOnlyList<string?> adapterIds, int[] next, int steps)
        {
            for (int step = 0; step < steps; step++)
            {
                var batch = rows.Select((slot, i) => new DecodeRow(slot, next[i], runner.SlotLength(slot), adapterIds[i])).ToList();
                var logits = runner.Decode(batch);
                for (int i = 0; i < rows.Length; i++) next[i] = ArgMax(logits[i]);
            }
        }

        private static int ArgMax(float[] v)
        {
            int best = 0;
            for (int i = 1; i < v.Length; i++) if (v[i] > v[best]) best = i;
            return best;
        }
    }
}
