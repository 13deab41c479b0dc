using System.Diagnostics;
using System.IO.Compression;
using System.Text;

namespace SmoaServe.Text.Structured;

/// <summary>
/// Cost of constrained decoding per step: token-mask computation (and applying it to a logits row) along seeded
/// random walks through typical grammars, first with an empty mask cache (a grammar's first request), then warm.
/// Called by the `smoa bench structured` command; no model is needed.
/// </summary>
public static class StructuredBench
{
    public sealed record Result(
        string Vocabulary, int VocabSize, int TrieNodes, string Grammar, int States, double CompileMs,
        int ColdSteps, double ColdMeanUs, double ColdP99Us, double ColdMaxUs,
        int WarmSteps, double WarmMeanUs, double WarmP50Us, double WarmP99Us, double ApplyMeanUs, int CacheEntries)
    {
        public override string ToString() =>
            $"{Vocabulary,-14} vocab {VocabSize,7}  {Grammar,-12} states {States,5} compile {CompileMs,6:F2} ms | " +
            $"cold {ColdSteps,4} steps mean {ColdMeanUs,8:F1} µs p99 {ColdP99Us,8:F1} max {ColdMaxUs,8:F1} | " +
            $"warm {WarmSteps,5} steps mean {WarmMeanUs,6:F1} µs p50 {WarmP50Us,6:F1} p99 {WarmP99Us,7:F1} | apply {ApplyMeanUs,5:F1} µs | cache {CacheEntries}";
    }

    /// <summary>A function-call argument schema: nested object, enum, bounded and free strings, numbers, an array.</summary>
    public const string ToolSchema = """
    {"type":"object","properties":{
      "location":{"type":"string","description":"city"},
      "unit":{"type":"string","enum":["celsius","fahrenheit"]},
      "days":{"type":"integer"},
      "include":{"type":"array","items":{"type":"string","maxLength":32},"maxItems":4},
      "options":{"type":"object","properties":{"detailed":{"type":"boolean"},"threshold":{"type":["number","null"]}},"required":["detailed"],"additionalProperties":false}
    },"required":["location","unit","options"],"additionalProperties":false}
    """;

    /// <summary>
    /// A vocabulary for the benchmark: "synthetic:N" (<see cref="SyntheticVocabulary"/>), "tiktoken:FILE" (a tiktoken
    /// BPE file, ".deflate" for the compressed form Microsoft.ML.Tokenizers.Data.* packages embed), or a model directory
    /// (its tokenizer, with its EOS as the stop id).
    /// </summary>
    public static TokenVocabulary LoadVocabulary(string spec)
    {
        if (spec.StartsWith("synthetic:", StringComparison.Ordinal))
        {
            var n = int.Parse(spec["synthetic:".Length..]);
            if (n < 300 || n > 1_000_000) throw new ArgumentException($"synthetic vocabulary size must be in [300, 1000000] (got {n})");
            return SyntheticVocabulary(n);
        }
        if (spec.StartsWith("tiktoken:", StringComparison.Ordinal))
        {
            var path = spec["tiktoken:".Length..];
            using var file = File.OpenRead(path);
            return TiktokenVocabulary(file, path.EndsWith(".deflate", StringComparison.Ordinal), out _);
        }
        var tokenizer = TokenizerLoader.Load(spec);
        return TokenVocabulary.From(tokenizer, tokenizer.EosTokenId is int eos ? [eos] : []);
    }

    /// <param name="walks">random walks per grammar after the cold one</param>
    public static IReadOnlyList<Result> Run(TokenVocabulary vocabulary, string vocabularyName, int walks = 6, int maxSteps = 300, int seed = 1)
    {
        var grammars = new (string Name, Func<Grammar> Build)[]
        {
            ("tool-args", () => JsonSchemaGrammar.Compile(ToolSchema)),
            ("json_object", () => JsonSchemaGrammar.AnyObject(new JsonGrammarOptions { MaxNestingDepth = 4 })),
            ("free-text", () => JsonSchemaGrammar.Compile("""{"type":"object","properties":{"answer":{"type":"string"}},"required":["answer"]}""")),
        };
        var results = new List<Result>();
        // JIT warm-up on separate grammar instances, so that "cold" measures empty mask caches, not compilation
        foreach (var (_, build) in grammars)
            for (var w = 0; w < 2; w++) WalkOnce(build(), vocabulary, new Random(seed + 1000 + w), maxSteps, [], null);
        foreach (var (name, build) in grammars)
        {
            var clock = Stopwatch.StartNew();
            var grammar = build();
            var compileMs = clock.Elapsed.TotalMilliseconds;
            var rng = new Random(seed);
            var cold = new List<double>();
            WalkOnce(grammar, vocabulary, rng, maxSteps, cold, null);
            var warm = new List<double>();
            var apply = new List<double>();
            for (var w = 0; w < walks; w++) WalkOnce(grammar, vocabulary, rng, maxSteps, warm, apply);
            results.Add(new Result(vocabularyName, vocabulary.Size, vocabulary.Trie.NodeCount, name, grammar.StateCount, compileMs,
                cold.Count, cold.Average(), Percentile(cold, 0.99), cold.Max(),
                warm.Count, warm.Average(), Percentile(warm, 0.5), Percentile(warm, 0.99), apply.Average(),
                grammar.CacheFor(vocabulary).EntryCount));
        }
        return results;
    }

    static void WalkOnce(Grammar grammar, TokenVocabulary vocabulary, Random rng, int maxSteps, List<double> maskUs, List<double>? applyUs)
    {
        var matcher = new GrammarMatcher(grammar, vocabulary);
        var mask = new TokenBitmask(vocabulary.Size);
        var logits = new float[vocabulary.Size];
        var allowed = new List<int>();
        for (var step = 0; step < maxSteps; step++)
        {
            long t0 = Stopwatch.GetTimestamp();
            matcher.FillNextTokenMask(mask);
            maskUs.Add(Stopwatch.GetElapsedTime(t0).TotalMicroseconds);
            if (applyUs is not null)
            {
                t0 = Stopwatch.GetTimestamp();
                mask.ApplyTo(logits);
                applyUs.Add(Stopwatch.GetElapsedTime(t0).TotalMicroseconds);
            }
            allowed.Clear();
            allowed.AddRange(mask.AllowedIds());
            if (allowed.Count == 0) throw new InvalidOperationException($"empty mask in {grammar.Description}");
            var pick = Pick(allowed, vocabulary, rng, matcher.IsComplete);
            if (vocabulary.IsStopToken(pick) || !matcher.Accept(pick)) return;
        }
    }

    /// <summary>Uniform among allowed ids, except that once complete a stop id is taken (walks end).</summary>
    static int Pick(List<int> allowed, TokenVocabulary vocabulary, Random rng, bool complete)
    {
        if (complete) foreach (var id in allowed) if (vocabulary.IsStopToken(id)) return id;
        return allowed[rng.Next(allowed.Count)];
    }

    static double Percentile(List<double> xs, double q)
    {
        var sorted = xs.Order().ToArray();
        return sorted[Math.Min(sorted.Length - 1, (int)(q * sorted.Length))];
    }

    /// <summary>
    /// A tiktoken BPE file as a vocabulary: "base64 rank" per line, or (Microsoft.ML.Tokenizers' embedded data files,
    /// deflate-compressed) a "Capacity: N" header then one base64 token per line in rank order.
    /// </summary>
    public static TokenVocabulary TiktokenVocabulary(Stream stream, bool deflated, out int stopId)
    {
        using var input = deflated ? new DeflateStream(stream, CompressionMode.Decompress, leaveOpen: true) : stream;
        using var reader = new StreamReader(input, Encoding.ASCII);
        var bytes = new List<byte[]?>();
        string? line;
        while ((line = reader.ReadLine()) is not null)
        {
            if (line.Length == 0 || line.StartsWith("Capacity:", StringComparison.Ordinal)) continue;
            var sp = line.IndexOf(' ');
            var rank = sp > 0 ? int.Parse(line.AsSpan(sp + 1)) : bytes.Count;
            if (sp < 0) sp = line.Length;
            if (rank < 0 || rank > 10_000_000) throw new FormatException($"rank {rank} out of range");
            while (bytes.Count <= rank) bytes.Add(null);
            bytes[rank] = Convert.FromBase64String(line[..sp]);
        }
        stopId = bytes.Count;                   // one special end-of-text id after the ranks
        return TokenVocabulary.FromTokenBytes(bytes, [stopId]);
    }

    /// <summary>
    /// A synthetic byte-level BPE-like vocabulary of <paramref name="size"/> ids (the last one a stop id): all bytes,
    /// numbers up to 3 digits, whitespace runs, JSON punctuation pairs, then pseudo-English words with and without a
    /// leading space and capitalised, and accented / CJK pieces, as real 32k–128k vocabularies are made of.
    /// </summary>
    public static TokenVocabulary SyntheticVocabulary(int size, int seed = 1)
    {
        var rng = new Random(seed);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var tokens = new List<byte[]?>();
        void Add(byte[] b)
        {
            if (tokens.Count < size - 1 && seen.Add(Convert.ToBase64String(b))) tokens.Add(b);
        }
        for (var b = 0; b < 256; b++) Add([(byte)b]);
        for (var n = 0; n < 1000; n++) Add(Encoding.UTF8.GetBytes(n.ToString()));
        for (var n = 2; n <= 32; n++) { Add(Encoding.UTF8.GetBytes(new string(' ', n))); Add(Encoding.UTF8.GetBytes("\n" + new string(' ', n - 1))); }
        const string punct = "{}[]\":,.;!?()'-_/\\<>=+*&%$#@";
        foreach (var a in punct) foreach (var c in punct) Add(Encoding.UTF8.GetBytes($"{a}{c}"));
        foreach (var a in punct) { Add(Encoding.UTF8.GetBytes(" " + a)); Add(Encoding.UTF8.GetBytes(a + "\n")); Add(Encoding.UTF8.GetBytes("\"" + a + "\"")); }
        const string vowels = "aeiouy", consonants = "bcdfghjklmnprstvwxz";
        const string accents = "éèàüöäçñøå", cjk = "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年";
        while (tokens.Count < size - 1)
        {
            var r = rng.Next(100);
            if (r < 4)
            {
                var piece = Encoding.UTF8.GetBytes(new string(Enumerable.Range(0, 1 + rng.Next(3)).Select(_ => cjk[rng.Next(cjk.Length)]).ToArray()));
                Add(piece);
                if (r == 0) { Add(piece[..^1]); Add(piece[1..]); }           // byte-level pieces that split a character
                continue;
            }
            var sb = new StringBuilder();
            var syllables = 1 + rng.Next(4);
            for (var i = 0; i < syllables; i++)
            {
                sb.Append(consonants[rng.Next(consonants.Length)]).Append(vowels[rng.Next(vowels.Length)]);
                if (rng.Next(3) == 0) sb.Append(consonants[rng.Next(consonants.Length)]);
            }
            if (r < 8) sb.Insert(rng.Next(sb.Length), accents[rng.Next(accents.Length)]);
            var word = sb.ToString();
            Add(Encoding.UTF8.GetBytes(" " + word));
            Add(Encoding.UTF8.GetBytes(word));
            if (rng.Next(3) == 0) Add(Encoding.UTF8.GetBytes(" " + char.ToUpperInvariant(word[0]) + word[1..]));
            if (rng.Next(8) == 0) Add(Encoding.UTF8.GetBytes(word + "\","));
        }
        var stop = tokens.Count;
        return TokenVocabulary.FromTokenBytes(tokens, [stop]);
    }
}
