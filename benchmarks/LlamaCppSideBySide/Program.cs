using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using LLama;
using LLama.Common;
using LLama.Native;
using SmoaServe.Engine.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace LlamaCppSideBySide;

/// <summary>
/// llama.cpp (LLamaSharp's libllama) and `smoa` side by side on the same synthetic Llama:
///   run        writes the synthetic weights as GGUF (F32, F16), then alternates llama.cpp and smoa processes
///              (each config once per round, --runs rounds), and prints one report with medians and ratios;
///   write-gguf writes one GGUF;  llama  decodes with llama.cpp and prints {"tokens_per_s": ...}.
/// Both sides: B sequences, a random prompt of 16 tokens each, then --steps greedy decode steps (one batched call per
/// step carrying all B sequences, full logits read back for each), tokens/s = B / median step time.
/// </summary>
public static class Program
{
    private const string DefaultSpec = "hidden=768,layers=12,heads=12,kv_heads=4,ffn=2048,vocab=32000";

    public static int Main(string[] args)
    {
        var a = Args.Parse(args);
        string mode = a.Positional ?? "run";
        return mode switch
        {
            "write-gguf" => WriteGguf(a.Get("synthetic", DefaultSpec), a.Get("type", "f32"), a.Require("out")),
            "llama" => RunLlama(a.Require("gguf"), a.Int("batch", 1), a.Int("steps", 64), a.Int("threads", 2), a.Int("prompt-len", 16)),
            "run" => Run(a),
            _ => throw new ArgumentException("modes: run | write-gguf | llama"),
        };
    }

    // ---------------- the side-by-side run ----------------

    private sealed record Config(string Name, int Batch, string Kind, string Weights);

    private static int Run(Args a)
    {
        string spec = a.Get("synthetic", DefaultSpec);
        int runs = a.Int("runs", 3), steps = a.Int("steps", 64), threads = a.Int("threads", 2);
        string work = a.Get("work", Path.Combine(Path.GetTempPath(), "llamacpp-side-by-side"));
        string smoa = a.Get("smoa", FindSmoa());
        var batches = a.Get("batches", "1,16").Split(',').Select(int.Parse).ToArray();
        var sides = a.Get("configs", "llama-f32,llama-f16,smoa-float32,smoa-bf16,smoa-int8").Split(',');
        Directory.CreateDirectory(work);
        string self = typeof(Program).Assembly.Location;

        var ggufs = new Dictionary<string, string>();
        foreach (var type in new[] { "f32", "f16" })
            if (sides.Contains("llama-" + type))
            {
                string path = Path.Combine(work, $"synthetic-{type}.gguf");
                if (!File.Exists(path)) Exec(self, $"write-gguf --synthetic {spec} --type {type} --out {path}");
                ggufs[type] = path;
            }

        var configs = new List<Config>();
        foreach (int b in batches)
            foreach (var side in sides)
            {
                var parts = side.Split('-', 2);
                configs.Add(new Config($"{(parts[0] == "llama" ? "llama.cpp " + parts[1].ToUpperInvariant() : "smoa " + parts[1])}, batch {b}", b, parts[0], parts[1]));
            }
        var results = configs.ToDictionary(c => c, _ => new List<double>());
        string loadBefore = LoadAverage();
        double bandwidthBefore = Bandwidth(smoa, threads);
        for (int r = 0; r < runs; r++)
        {
            // alternate: the order of the configs flips every round
            var order = r % 2 == 0 ? configs : Enumerable.Reverse(configs).ToList();
            foreach (var c in order)
            {
                string json = c.Kind == "llama"
                    ? Exec(self, $"llama --gguf {ggufs[c.Weights]} --batch {c.Batch} --steps {steps} --threads {threads}")
                    : Exec(smoa, $"bench step --synthetic {spec} --batch {c.Batch} --steps {steps} --threads {threads} --weights-dtype {c.Weights} --decode-only --json");
                double tps = LastJson(json).GetProperty(c.Kind == "llama" ? "tokens_per_s" : "kernel_tokens_per_s").GetDouble();
                results[c].Add(tps);
                Console.Error.WriteLine($"round {r + 1}: {c.Name}: {tps:F1} tok/s");
            }
        }
        double bandwidthAfter = Bandwidth(smoa, threads);
        string loadAfter = LoadAverage();

        var report = new StringBuilder();
        report.AppendLine($"# llama.cpp vs smoa, synthetic {spec}, {threads} threads, {steps} decode steps, {runs} alternated rounds");
        report.AppendLine();
        report.AppendLine($"load average {loadBefore} before, {loadAfter} after; measured GEMV bandwidth (smoa bench bandwidth, float32, 400 MB) {bandwidthBefore:F1} GB/s before, {bandwidthAfter:F1} after");
        report.AppendLine();
        report.AppendLine("| config | median tok/s | runs |");
        report.AppendLine("| --- | --- | --- |");
        foreach (var c in configs)
            report.AppendLine($"| {c.Name} | {Median(results[c]):F1} | {string.Join(", ", results[c].Select(v => v.ToString("F1", CultureInfo.InvariantCulture)))} |");
        report.AppendLine();
        report.AppendLine("| ratio (medians) | value |");
        report.AppendLine("| --- | --- |");
        foreach (int b in batches)
            foreach (var (ours, theirs) in new[] { ("float32", "f32"), ("bf16", "f16"), ("int8", "f16"), ("bf16", "f32") })
            {
                var o = configs.FirstOrDefault(c => c.Kind == "smoa" && c.Weights == ours && c.Batch == b);
                var t = configs.FirstOrDefault(c => c.Kind == "llama" && c.Weights == theirs && c.Batch == b);
                if (o is not null && t is not null)
                    report.AppendLine($"| smoa {ours} / llama.cpp {theirs.ToUpperInvariant()}, batch {b} | {Median(results[o]) / Median(results[t]):F2}x |");
            }
        Console.WriteLine(report.ToString());
        if (a.Get("out", "") is { Length: > 0 } outPath) File.WriteAllText(outPath, report.ToString());
        return 0;
    }

    private static string FindSmoa()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "src", "SmoaServe.Cli", "bin", "Release", "net10.0", "smoa.dll");
            if (File.Exists(candidate)) return candidate;
        }
        throw new FileNotFoundException("smoa.dll not found: build src/SmoaServe.Cli -c Release or pass --smoa PATH");
    }

    private static double Bandwidth(string smoa, int threads) =>
        LastJson(Exec(smoa, $"bench bandwidth --threads {threads} --seconds 2 --json")).GetProperty("gemv_gb_per_s").GetDouble();

    /// <summary>Runs `dotnet dll args` niced, returns stdout; stderr passes through.</summary>
    private static string Exec(string dll, string args)
    {
        var psi = new ProcessStartInfo("nice", $"-n 10 dotnet {dll} {args}") { RedirectStandardOutput = true, UseShellExecute = false };
        using var p = Process.Start(psi)!;
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"{Path.GetFileName(dll)} {args}: exit code {p.ExitCode}\n{output}");
        return output;
    }

    private static JsonElement LastJson(string output) =>
        JsonDocument.Parse(output.Split('\n', StringSplitOptions.RemoveEmptyEntries).Last(l => l.TrimStart().StartsWith('{'))).RootElement;

    private static string LoadAverage()
    {
        try { return File.ReadAllText("/proc/loadavg").Split(' ')[0]; }
        catch (IOException) { return "?"; }
    }

    private static double Median(List<double> v)
    {
        var s = v.OrderBy(x => x).ToArray();
        return s.Length == 0 ? double.NaN : s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }

    // ---------------- GGUF ----------------

    /// <summary>
    /// The synthetic model `smoa --synthetic SPEC` builds (same seed, same draws) written as a llama-architecture GGUF:
    /// Q and K rows permuted from Hugging Face's rotate-half RoPE layout to GGUF's interleaved one (as llama.cpp's
    /// convert_hf_to_gguf.py does); a placeholder SentencePiece vocabulary of the right size (ids are fed directly).
    /// </summary>
    private static int WriteGguf(string spec, string type, string outPath)
    {
        var config = SyntheticLlama.ParseSpec(spec);
        using var model = SyntheticLlama.Create(config);
        var tt = type switch { "f32" => GgufWriter.TensorType.F32, "f16" => GgufWriter.TensorType.F16, _ => throw new ArgumentException("--type f32|f16") };
        var g = new GgufWriter();
        g.Str("general.architecture", "llama");
        g.Str("general.name", "smoa-synthetic");
        g.U32("general.file_type", tt == GgufWriter.TensorType.F32 ? 0u : 1u);
        g.U32("llama.context_length", 4096);
        g.U32("llama.embedding_length", (uint)config.HiddenSize);
        g.U32("llama.block_count", (uint)config.NumLayers);
        g.U32("llama.feed_forward_length", (uint)config.IntermediateSize);
        g.U32("llama.attention.head_count", (uint)config.NumHeads);
        g.U32("llama.attention.head_count_kv", (uint)config.NumKvHeads);
        g.U32("llama.rope.dimension_count", (uint)config.HeadDim);
        g.U32("llama.vocab_size", (uint)config.VocabSize);
        g.F32("llama.rope.freq_base", (float)config.Rope.Theta);
        g.F32("llama.attention.layer_norm_rms_epsilon", (float)config.RmsNormEps);
        var tokens = new List<string> { "<unk>", "<s>", "</s>" };
        var types = new List<int> { 2, 3, 3 };
        for (int b = 0; b < 256; b++) { tokens.Add($"<0x{b:X2}>"); types.Add(6); }
        while (tokens.Count < config.VocabSize) { tokens.Add($"\u2581t{tokens.Count}"); types.Add(1); }
        g.Str("tokenizer.ggml.model", "llama");
        g.Strings("tokenizer.ggml.tokens", tokens);
        g.Floats("tokenizer.ggml.scores", tokens.Select((_, i) => i < 259 ? 0f : -i).ToArray());
        g.Ints("tokenizer.ggml.token_type", types);
        g.U32("tokenizer.ggml.bos_token_id", 1);
        g.U32("tokenizer.ggml.eos_token_id", 2);
        g.U32("tokenizer.ggml.unknown_token_id", 0);

        using var noGrad = torch.no_grad();
        void Matrix(string name, Tensor w) => g.Tensor(name, w.shape, tt, Bytes(w, tt));
        void Vector(string name, Tensor w) => g.Tensor(name, w.shape, GgufWriter.TensorType.F32, Bytes(w, GgufWriter.TensorType.F32));
        Tensor Permute(Tensor w, int heads) // HF [heads·D, in] rotate-half rows → interleaved pairs
        {
            long d = w.shape[0] / heads, inDim = w.shape[1];
            return w.reshape(heads, 2, d / 2, inDim).transpose(1, 2).reshape(w.shape[0], inDim);
        }
        Matrix("token_embd.weight", model.EmbedTokens);
        for (int l = 0; l < config.NumLayers; l++)
        {
            using var scope = torch.NewDisposeScope();
            var layer = model.Layers[l];
            Vector($"blk.{l}.attn_norm.weight", layer.InputNorm.Weight);
            Matrix($"blk.{l}.attn_q.weight", Permute(model.ProjectionWeight(l, Projection.Q), config.NumHeads));
            Matrix($"blk.{l}.attn_k.weight", Permute(model.ProjectionWeight(l, Projection.K), config.NumKvHeads));
            Matrix($"blk.{l}.attn_v.weight", model.ProjectionWeight(l, Projection.V));
            Matrix($"blk.{l}.attn_output.weight", model.ProjectionWeight(l, Projection.O));
            Vector($"blk.{l}.ffn_norm.weight", layer.PostAttentionNorm.Weight);
            Matrix($"blk.{l}.ffn_gate.weight", model.ProjectionWeight(l, Projection.Gate));
            Matrix($"blk.{l}.ffn_up.weight", model.ProjectionWeight(l, Projection.Up));
            Matrix($"blk.{l}.ffn_down.weight", model.ProjectionWeight(l, Projection.Down));
        }
        Vector("output_norm.weight", model.Norm.Weight);
        if (!config.TieWordEmbeddings) Matrix("output.weight", model.LmHead);
        g.Save(outPath);
        Console.Error.WriteLine($"wrote {outPath} ({new FileInfo(outPath).Length / 1e6:F1} MB, {type})");
        return 0;
    }

    private static byte[] Bytes(Tensor t, GgufWriter.TensorType type)
    {
        using var c = (type == GgufWriter.TensorType.F32 ? t.to_type(ScalarType.Float32) : t.to_type(ScalarType.Float16)).contiguous();
        return c.bytes.ToArray();
    }

    // ---------------- llama.cpp ----------------

    private static int RunLlama(string gguf, int batch, int steps, int threads, int promptLen)
    {
        NativeLogConfig.llama_log_set((level, message) => { if (level >= LLamaLogLevel.Error) Console.Error.Write(message); });
        var p = new ModelParams(gguf)
        {
            ContextSize = (uint)(batch * (promptLen + steps + 8)),
            BatchSize = (uint)Math.Max(512, batch * promptLen),
            UBatchSize = (uint)Math.Max(512, batch * promptLen),
            SeqMax = (uint)batch,
            Threads = threads,
            BatchThreads = threads,
            GpuLayerCount = 0,
        };
        using var weights = LLamaWeights.LoadFromFile(p);
        using var context = weights.CreateContext(p);
        int vocab = weights.Vocab.Count;
        var rng = new Random(1);
        var b = new LLamaBatch();
        var last = new int[batch];
        for (int s = 0; s < batch; s++)
            for (int i = 0; i < promptLen; i++)
            {
                b.Add((LLamaToken)rng.Next(vocab), i, (LLamaSeqId)s, i == promptLen - 1);
                if (i == promptLen - 1) last[s] = b.TokenCount - 1;
            }
        Check(context.Decode(b));
        var next = new int[batch];
        for (int s = 0; s < batch; s++) next[s] = ArgMax(context.NativeHandle.GetLogitsIth(last[s]));
        var times = new List<double>();
        for (int step = 0; step < steps + 2; step++)
        {
            var t = Stopwatch.StartNew();
            b.Clear();
            for (int s = 0; s < batch; s++) b.Add((LLamaToken)next[s], promptLen + step, (LLamaSeqId)s, true);
            Check(context.Decode(b));
            for (int s = 0; s < batch; s++) next[s] = ArgMax(context.NativeHandle.GetLogitsIth(s));
            if (step >= 2) times.Add(t.Elapsed.TotalSeconds);
        }
        double median = Median(times);
        Console.Error.WriteLine($"llama.cpp {Path.GetFileName(gguf)} batch {batch}: step {median * 1000:F2} ms = {batch / median:F1} tok/s ({threads} threads)");
        Console.WriteLine(JsonSerializer.Serialize(new { tokens_per_s = Math.Round(batch / median, 1), step_ms = Math.Round(median * 1000, 3), batch, threads }));
        return 0;
    }

    private static void Check(DecodeResult r)
    {
        if (r != DecodeResult.Ok) throw new InvalidOperationException($"llama_decode: {r}");
    }

    private static int ArgMax(ReadOnlySpan<float> v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++) if (v[i] > v[best]) best = i;
        return best;
    }

    private sealed class Args
    {
        private readonly Dictionary<string, string> _values = [];
        public string? Positional { get; private set; }

        public static Args Parse(string[] args)
        {
            var a = new Args();
            for (int i = 0; i < args.Length; i++)
            {
                if (args[i].StartsWith("--", StringComparison.Ordinal) && i + 1 < args.Length) a._values[args[i][2..]] = args[++i];
                else if (a.Positional is null) a.Positional = args[i];
                else throw new ArgumentException($"unexpected argument '{args[i]}'");
            }
            return a;
        }

        public string Get(string key, string fallback) => _values.GetValueOrDefault(key, fallback);
        public string Require(string key) => _values.TryGetValue(key, out var v) ? v : throw new ArgumentException($"--{key} is required");
        public int Int(string key, int fallback) => _values.TryGetValue(key, out var v) ? int.Parse(v, CultureInfo.InvariantCulture) : fallback;
    }
}
