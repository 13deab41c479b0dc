using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using SmoaServe.Engine.Generation;
using SmoaServe.Engine.Model;
using SmoaServe.Text;
using SmoaServe.Text.Structured;

namespace SmoaServe.Cli.Commands;

/// <summary>
/// `smoa bench structured`: what constrained decoding adds to a decode step on a real model. B rows decode together;
/// each row's output follows a grammar (a tool-argument schema, then any JSON object). Per step it times the batched
/// forward and, separately, the grammar work of every row (mask computed and applied, sampled id accepted), as the
/// model thread does them one after the other; the ratio is the overhead of structured output. Rows whose output is
/// complete start a new one (the mask cache stays warm); the first output of each grammar is timed on its own (cold).
/// </summary>
public static class StructuredOutputBench
{
    public const string Usage = $"""
        usage: smoa bench structured (--model DIR | --synthetic {SyntheticLlama.SpecHelp})
                 [--batch B[,B...]] [--steps S] [--prompt-len P] [--seed N] [--device cpu|cuda] [--dtype float32|bfloat16] [--threads N] [--json]
          --batch LIST              decode batch sizes to measure (default 1,8)
          --steps S                 timed decode steps per batch size and grammar (default 64, after 8 warm-up steps)
          synthetic models use a synthetic byte-level vocabulary of their size
        """;

    private static readonly string[] Options = ["model", "synthetic", "device", "dtype", "threads", "batch", "steps", "prompt-len", "seed"];

    /// <param name="Pass">cold: a grammar's first use (empty mask cache); warm: the same grammar again (a later request with that schema)</param>
    public sealed record Row(string Grammar, string Pass, int Batch, double ForwardMs, double GrammarMs, double GrammarMeanMs, double SampleMs)
    {
        /// <summary>Median grammar time over median forward time per step.</summary>
        public double Ratio => GrammarMs / ForwardMs;
    }

    public static int Run(string[] args)
    {
        var a = CliArgs.Parse(args, Options, ["json"]);
        if (a.Positionals.Count > 0) throw new UsageException($"unexpected argument '{a.Positionals[0]}'");
        if (a.Has("model") == a.Has("synthetic")) throw new UsageException("give one of --model and --synthetic");
        var batches = (a.Get("batch") ?? "1,8").Split(',').Select(b => int.TryParse(b, out int v) && v is >= 1 and <= 256 ? v
            : throw new UsageException($"--batch: '{b}' is not a batch size in [1, 256]")).ToArray();
        int steps = a.GetInt("steps", 64), promptLen = a.GetInt("prompt-len", 8), seed = a.GetInt("seed", 1);
        if (steps is < 1 or > 4096) throw new UsageException("--steps must be in [1, 4096]");
        if (promptLen is < 1 or > 1024) throw new UsageException("--prompt-len must be in [1, 1024]");
        bool json = a.Flag("json");
        var log = json ? Console.Error : Console.Out;

        LlamaModel? synthetic = null;
        if (a.Get("synthetic") is { } spec)
        {
            try { synthetic = SyntheticLlama.Create(SyntheticLlama.ParseSpec(spec), ModelOptions.LoadOptions(a)); }
            catch (ArgumentException e) { throw new UsageException("--synthetic: " + e.Message); }
        }
        using var engine = ModelOptions.Engine(a, synthetic);
        int vocabSize = engine.Model.Config.VocabSize;
        TokenVocabulary vocabulary;
        if (a.Get("model") is { } dir)
        {
            var tokenizer = TokenizerLoader.Load(dir);
            vocabulary = TokenVocabulary.From(tokenizer, tokenizer.EosTokenId is int eos ? [eos] : []);
        }
        else vocabulary = StructuredBench.SyntheticVocabulary(vocabSize, seed);
        log.WriteLine($"model: {a.Get("model") ?? "synthetic " + a.Get("synthetic")} on {engine.Model.Device.type}, vocabulary {vocabulary.Size} ids ({vocabulary.TrieNodeCount} trie nodes)");

        var grammars = new (string Name, Func<Grammar> Build)[]
        {
            ("tool-args", () => JsonSchemaGrammar.Compile(StructuredBench.ToolSchema)),
            ("json_object", () => JsonSchemaGrammar.AnyObject()),
        };
        var rows = new List<Row>();
        // JIT and allocator warm-up on throwaway grammars: the figures below measure steady code
        foreach (var (name, build) in grammars) Measure(engine, vocabulary, build(), name, "jit", 1, 16, promptLen, seed + 100);
        foreach (var (name, build) in grammars)
            foreach (int b in batches)
            {
                var grammar = build();
                foreach (var (pass, passSeed) in new[] { ("cold", seed), ("warm", seed + 1) })
                {
                    var row = Measure(engine, vocabulary, grammar, name, pass, b, steps, promptLen, passSeed);
                    rows.Add(row);
                    log.WriteLine($"{name,-12} {pass} batch {b,3}: forward {row.ForwardMs,8:F3} ms/step | grammar {row.GrammarMs,8:F3} ms/step " +
                                  $"(mean {row.GrammarMeanMs:F3}, {row.GrammarMs * 1000 / b:F1} µs/row) | sampling {row.SampleMs,7:F3} ms/step | " +
                                  $"grammar / forward {row.Ratio:P1}");
                }
            }
        if (json)
            Console.WriteLine(JsonSerializer.Serialize(rows.Select(r => new Dictionary<string, object?>
            {
                ["grammar"] = r.Grammar, ["pass"] = r.Pass, ["batch"] = r.Batch, ["forward_ms"] = Math.Round(r.ForwardMs, 4),
                ["grammar_ms"] = Math.Round(r.GrammarMs, 4), ["grammar_mean_ms"] = Math.Round(r.GrammarMeanMs, 4),
                ["sampling_ms"] = Math.Round(r.SampleMs, 4), ["grammar_over_forward"] = Math.Round(r.Ratio, 5),
            })));
        return 0;
    }

    private static double Median(List<double> xs) => xs.Order().ElementAt(xs.Count / 2);

    private static Row Measure(Engine.Hosting.EngineModel engine, TokenVocabulary vocabulary, Grammar grammar, string name, string pass, int batch, int steps,
        int promptLen, int seed)
    {
        int length = promptLen + steps + 2;
        using var runner = engine.CreateRunner(batch, length);
        int vocab = runner.VocabSize;
        var rng = new Random(seed);
        var tokens = new int[batch];
        var matchers = new GrammarMatcher[batch];
        var samplers = new SequenceSampler[batch];
        for (int s = 0; s < batch; s++)
        {
            var prompt = Enumerable.Range(0, promptLen).Select(_ => rng.Next(vocab)).ToArray();
            tokens[s] = Sampler.ArgMax(runner.Prefill(s, prompt, 0, null));
            matchers[s] = new GrammarMatcher(grammar, vocabulary);
            samplers[s] = new SequenceSampler(new SamplingParams { Temperature = 1, Seed = seed }, [], CounterRng.RowSeed(seed, s));
        }
        var forward = new List<double>();
        var grammarMs = new List<double>();
        double sample = 0;
        var scratch = new float[vocab];
        for (int step = 0; step < steps; step++)
        {
            var rowsIn = Enumerable.Range(0, batch).Select(s => new Engine.Runner.DecodeRow(s, tokens[s], promptLen + step, null)).ToList();
            long t0 = Stopwatch.GetTimestamp();
            var logits = runner.Decode(rowsIn);
            forward.Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
            double g = 0;
            for (int s = 0; s < batch; s++)
            {
                logits[s].AsSpan(0, Math.Min(vocab, logits[s].Length)).CopyTo(scratch);
                long t1 = Stopwatch.GetTimestamp();
                matchers[s].MaskLogits(scratch);
                g += Stopwatch.GetElapsedTime(t1).TotalMilliseconds;
                long t2 = Stopwatch.GetTimestamp();
                int id = samplers[s].Next(scratch).TokenId;
                sample += Stopwatch.GetElapsedTime(t2).TotalMilliseconds;
                long t3 = Stopwatch.GetTimestamp();
                bool accepted = matchers[s].Accept(id);
                g += Stopwatch.GetElapsedTime(t3).TotalMilliseconds;
                tokens[s] = id;
                // a finished output starts a new one (the grammar's mask cache stays)
                if (!accepted || matchers[s].IsTerminated || vocabulary.IsStopToken(id)) matchers[s] = new GrammarMatcher(grammar, vocabulary);
            }
            grammarMs.Add(g);
        }
        return new Row(name, pass, batch, Median(forward), Median(grammarMs), grammarMs.Average(), sample / steps);
    }
}
