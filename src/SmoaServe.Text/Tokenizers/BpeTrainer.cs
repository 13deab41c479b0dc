using System.Text;
using System.Text.Json;

namespace SmoaServe.Text.Tokenizers;

/// <summary>
/// Trains a byte-level BPE tokenizer (the GPT-2 / Llama 3 kind) and writes it as a Hugging Face tokenizer.json.
/// Text is split into pre-tokens with the Llama 3 pattern, each pre-token's UTF-8 bytes are mapped to printable
/// characters (<see cref="ByteLevel"/>), and starting from the 256 byte symbols the most frequent adjacent pair is
/// merged until the vocabulary is full (ties: the pair first seen wins, so a run is deterministic). Special tokens
/// take the last ids.
/// </summary>
public static class BpeTrainer
{
    /// <summary>Llama 3's pre-tokenizer pattern (contractions, words with one leading non-letter, 1–3 digits, punctuation, spaces).</summary>
    public const string Llama3Pattern = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    public sealed record Result(List<string> Vocab, List<(string Left, string Right)> Merges, List<string> Specials);

    /// <param name="texts">training text (each item split on its own)</param>
    /// <param name="vocabSize">total tokens, specials included (at least 256 + specials)</param>
    /// <param name="specials">special tokens, given the ids vocabSize − specials.Count .. vocabSize − 1</param>
    public static Result Train(IEnumerable<string> texts, int vocabSize, IReadOnlyList<string> specials, int minPairCount = 2)
    {
        int mergesWanted = vocabSize - 256 - specials.Count;
        if (mergesWanted < 0) throw new ArgumentOutOfRangeException(nameof(vocabSize), $"vocabulary of {vocabSize} cannot hold 256 bytes and {specials.Count} special tokens");
        var splitter = new CodePointRegex(Llama3Pattern);

        // Distinct pre-tokens with their counts, in first-seen order.
        var counts = new Dictionary<string, int>(StringComparer.Ordinal);
        var order = new List<string>();
        foreach (var text in texts)
            foreach (var (start, length) in splitter.Matches(text))
            {
                var word = ByteLevel.Encode(text.Substring(start, length));
                if (counts.TryGetValue(word, out int c)) counts[word] = c + 1;
                else { counts[word] = 1; order.Add(word); }
            }

        var vocab = Enumerable.Range(0, 256).Select(b => ByteLevel.CharByByte[b].ToString()).ToList();
        var symbolId = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < vocab.Count; i++) symbolId[vocab[i]] = i;

        var words = order.Select(w => w.Select(ch => symbolId[ch.ToString()]).ToList()).ToArray();
        var freq = order.Select(w => counts[w]).ToArray();

        // Pair statistics: count and the words that contain the pair.
        var pairCount = new Dictionary<(int, int), long>();
        var pairFirstSeen = new Dictionary<(int, int), int>();
        var pairWords = new Dictionary<(int, int), HashSet<int>>();
        int seen = 0;
        void Add(int w, List<int> s, int sign)
        {
            for (int i = 0; i + 1 < s.Count; i++)
            {
                var p = (s[i], s[i + 1]);
                pairCount[p] = pairCount.GetValueOrDefault(p) + sign * freq[w];
                if (sign > 0)
                {
                    if (!pairFirstSeen.ContainsKey(p)) pairFirstSeen[p] = seen++;
                    if (!pairWords.TryGetValue(p, out var set)) pairWords[p] = set = new HashSet<int>();
                    set.Add(w);
                }
            }
        }
        for (int w = 0; w < words.Length; w++) Add(w, words[w], +1);

        var merges = new List<(string, string)>();
        while (merges.Count < mergesWanted)
        {
            (int, int) best = default;
            long bestCount = 0;
            int bestSeen = int.MaxValue;
            foreach (var (p, c) in pairCount)
            {
                if (c > bestCount || c == bestCount && c > 0 && pairFirstSeen[p] < bestSeen)
                {
                    best = p; bestCount = c; bestSeen = pairFirstSeen[p];
                }
            }
            if (bestCount < minPairCount) break;
            string merged = vocab[best.Item1] + vocab[best.Item2];
            int newId = vocab.Count;
            vocab.Add(merged);
            symbolId[merged] = newId;
            merges.Add((vocab[best.Item1], vocab[best.Item2]));
            foreach (int w in pairWords[best].ToArray())
            {
                var s = words[w];
                Add(w, s, -1);
                var next = new List<int>(s.Count);
                for (int i = 0; i < s.Count; i++)
                {
                    if (i + 1 < s.Count && s[i] == best.Item1 && s[i + 1] == best.Item2) { next.Add(newId); i++; }
                    else next.Add(s[i]);
                }
                words[w] = next;
                Add(w, next, +1);
            }
            pairCount.Remove(best);
            pairWords.Remove(best);
        }
        vocab.AddRange(specials);
        return new Result(vocab, merges, specials.ToList());
    }

    /// <summary>
    /// tokenizer.json in the Hugging Face format: BPE model, Llama 3 split + byte-level pre-tokenizer, byte-level decoder,
    /// a post-processor that prepends <paramref name="bosToken"/>, the specials as added tokens. Written atomically.
    /// </summary>
    public static void WriteTokenizerJson(string path, Result r, string bosToken)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = false, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            int firstSpecial = r.Vocab.Count - r.Specials.Count;
            int bosId = firstSpecial + r.Specials.IndexOf(bosToken);
            if (bosId < firstSpecial) throw new ArgumentException($"bos token {bosToken} is not a special token");
            w.WriteStartObject();
            w.WriteString("version", "1.0");
            w.WriteNull("truncation");
            w.WriteNull("padding");
            w.WriteStartArray("added_tokens");
            for (int i = 0; i < r.Specials.Count; i++)
            {
                w.WriteStartObject();
                w.WriteNumber("id", firstSpecial + i);
                w.WriteString("content", r.Specials[i]);
                w.WriteBoolean("single_word", false);
                w.WriteBoolean("lstrip", false);
                w.WriteBoolean("rstrip", false);
                w.WriteBoolean("normalized", false);
                w.WriteBoolean("special", true);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteNull("normalizer");
            w.WriteStartObject("pre_tokenizer");
            w.WriteString("type", "Sequence");
            w.WriteStartArray("pretokenizers");
            w.WriteStartObject();
            w.WriteString("type", "Split");
            w.WriteStartObject("pattern"); w.WriteString("Regex", Llama3Pattern); w.WriteEndObject();
            w.WriteString("behavior", "Isolated");
            w.WriteBoolean("invert", false);
            w.WriteEndObject();
            w.WriteStartObject();
            w.WriteString("type", "ByteLevel");
            w.WriteBoolean("add_prefix_space", false);
            w.WriteBoolean("trim_offsets", true);
            w.WriteBoolean("use_regex", false);
            w.WriteEndObject();
            w.WriteEndArray();
            w.WriteEndObject();
            w.WriteStartObject("post_processor");
            w.WriteString("type", "TemplateProcessing");
            w.WriteStartArray("single");
            WriteSpecialItem(w, bosToken); WriteSequenceItem(w, "A");
            w.WriteEndArray();
            w.WriteStartArray("pair");
            WriteSpecialItem(w, bosToken); WriteSequenceItem(w, "A"); WriteSpecialItem(w, bosToken); WriteSequenceItem(w, "B");
            w.WriteEndArray();
            w.WriteStartObject("special_tokens");
            w.WriteStartObject(bosToken);
            w.WriteString("id", bosToken);
            w.WriteStartArray("ids"); w.WriteNumberValue(bosId); w.WriteEndArray();
            w.WriteStartArray("tokens"); w.WriteStringValue(bosToken); w.WriteEndArray();
            w.WriteEndObject();
            w.WriteEndObject();
            w.WriteEndObject();
            w.WriteStartObject("decoder");
            w.WriteString("type", "ByteLevel");
            w.WriteBoolean("add_prefix_space", true);
            w.WriteBoolean("trim_offsets", true);
            w.WriteBoolean("use_regex", true);
            w.WriteEndObject();
            w.WriteStartObject("model");
            w.WriteString("type", "BPE");
            w.WriteNull("dropout");
            w.WriteNull("unk_token");
            w.WriteNull("continuing_subword_prefix");
            w.WriteNull("end_of_word_suffix");
            w.WriteBoolean("fuse_unk", false);
            w.WriteBoolean("byte_fallback", false);
            w.WriteBoolean("ignore_merges", false);
            w.WriteStartObject("vocab");
            for (int i = 0; i < firstSpecial; i++) w.WriteNumber(r.Vocab[i], i);
            w.WriteEndObject();
            w.WriteStartArray("merges");
            foreach (var (a, b) in r.Merges)
            {
                w.WriteStartArray(); w.WriteStringValue(a); w.WriteStringValue(b); w.WriteEndArray();
            }
            w.WriteEndArray();
            w.WriteEndObject();
            w.WriteEndObject();
        }
        AtomicFile.WriteAllBytes(path, ms.ToArray());
    }

    private static void WriteSpecialItem(Utf8JsonWriter w, string token)
    {
        w.WriteStartObject(); w.WriteStartObject("SpecialToken"); w.WriteString("id", token); w.WriteNumber("type_id", 0); w.WriteEndObject(); w.WriteEndObject();
    }

    private static void WriteSequenceItem(Utf8JsonWriter w, string id)
    {
        w.WriteStartObject(); w.WriteStartObject("Sequence"); w.WriteString("id", id); w.WriteNumber("type_id", 0); w.WriteEndObject(); w.WriteEndObject();
    }
}

/// <summary>Whole-file writes that a crash cannot leave half-written: temporary file in the same folder, fsync, rename.</summary>
public static class AtomicFile
{
    public static void WriteAllBytes(string path, byte[] bytes)
    {
        string full = Path.GetFullPath(path);
        string dir = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(dir);
        string temp = Path.Combine(dir, $".{Path.GetFileName(full)}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var fs = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None))
            {
                fs.Write(bytes);
                fs.Flush(flushToDisk: true);
            }
            File.Move(temp, full, overwrite: true);
        }
        catch
        {
            try { File.Delete(temp); } catch { /* best effort */ }
            throw;
        }
    }

    public static void WriteAllText(string path, string text) => WriteAllBytes(path, new UTF8Encoding(false).GetBytes(text));
}
