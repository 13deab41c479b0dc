using System.Globalization;
using System.Text;
using System.Text.Json;

namespace SmoaServe.Training.Pretraining;

/// <summary>
/// Builds a small English training corpus from the WordNet 3.0 database files (Debian package wordnet-base, files in
/// /usr/share/wordnet; WordNet 3.0 licence: use, copy, modify and distribute for any purpose, with the copyright notice).
/// Only word senses that occur in the SemCor sense counts (cntlist.rev) are used, which keeps everyday words. Each
/// such synset becomes a plain-text document (its definition as a sentence and its example sentences), and each word
/// whose most frequent sense it is becomes chat conversations ("What is a dog?" → "A dog is a member of ...").
/// A fixed set of greetings and small talk is mixed in. Deterministic for a seed.
/// Output: JSONL, one object per line, <c>{"text": "..."}</c> or <c>{"messages": [{"role", "content"}, ...]}</c>.
/// </summary>
public static class WordNetCorpus
{
    private static readonly JsonSerializerOptions JsonOptions = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    private sealed record Synset(char Pos, string[] Words, string Definition, string[] Examples, bool[] FirstSense);

    private static readonly string[] Systems =
    [
        "You are a helpful assistant.",
        "You are a friendly assistant that explains everyday words.",
        "Answer briefly and clearly.",
    ];

    private static readonly (string[] Questions, string[] Answers)[] SmallTalk =
    [
        (["Hello!", "Hi!", "Hello", "Hi there!", "Hey!", "Good morning!"],
         ["Hello! How can I help you today?", "Hi! What would you like to know?", "Hello! Ask me about any everyday word or thing."]),
        (["How are you?", "How are you today?", "How is it going?"],
         ["I am fine, thank you. How can I help you?", "I am well, thanks for asking. What would you like to talk about?"]),
        (["Who are you?", "What are you?", "What is your name?"],
         ["I am a small language model trained on the definitions and example sentences of WordNet. I can tell you what everyday words mean.",
          "I am a small assistant that knows the meanings of many English words."]),
        (["What can you do?", "How can you help me?"],
         ["I can explain what everyday things are and what words mean, and use words in sentences. Try asking: what is a dog?"]),
        (["Thank you!", "Thanks!", "Thanks a lot.", "Thank you very much."],
         ["You are welcome!", "Glad I could help.", "You are welcome. Ask me anything else."]),
        (["Goodbye!", "Bye!", "See you later."],
         ["Goodbye! Have a nice day.", "Bye! Come back any time."]),
        (["Can you help me?", "I have a question."],
         ["Of course. What would you like to know?", "Sure, go ahead and ask."]),
        (["Tell me something interesting.", "Teach me a new word."],
         ["Here is a word: a lighthouse is a tower with a light that gives warning of shoals to passing ships.",
          "Here is one: a library is a room where books are kept."]),
    ];

    /// <summary>Writes the corpus to <paramref name="outPath"/> (atomically); returns (documents, conversations).</summary>
    public static (int Texts, int Chats) Build(string wordnetDir, string outPath, int seed = 1, int smallTalkRepeats = 40)
    {
        foreach (var f in new[] { "cntlist.rev", "data.noun", "data.verb", "data.adj", "data.adv" })
            if (!File.Exists(Path.Combine(wordnetDir, f))) throw new FileNotFoundException($"{wordnetDir}: {f} not found (install or extract the wordnet-base package)", f);
        var senses = ReadSenseCounts(Path.Combine(wordnetDir, "cntlist.rev"));
        var synsets = new List<Synset>();
        foreach (var (file, pos) in new[] { ("data.noun", 'n'), ("data.verb", 'v'), ("data.adj", 'a'), ("data.adv", 'r') })
            synsets.AddRange(ReadSynsets(Path.Combine(wordnetDir, file), pos, senses));

        var rng = new Random(seed);
        var lines = new List<string>();
        int texts = 0, chats = 0;
        var turns = new List<(string Q, string A)>();
        foreach (var s in synsets)
        {
            var doc = new StringBuilder(DefinitionSentence(s, s.Words[0]));
            foreach (var e in s.Examples) doc.Append(' ').Append(Sentence(e));
            lines.Add(JsonSerializer.Serialize(new { text = doc.ToString() }, JsonOptions));
            texts++;
            for (int i = 0; i < s.Words.Length; i++)
            {
                if (!s.FirstSense[i]) continue;
                turns.Add((Question(s, s.Words[i], rng), Answer(s, s.Words[i], rng)));
                if (s.Examples.Length > 0)
                    turns.Add((Pick(rng, $"Use the word \"{s.Words[i]}\" in a sentence.", $"Give me an example with \"{s.Words[i]}\".", $"How do you use \"{s.Words[i]}\"?"),
                        Sentence(s.Examples[rng.Next(s.Examples.Length)])));
            }
        }
        for (int r = 0; r < smallTalkRepeats; r++)
            foreach (var (qs, ans) in SmallTalk)
                turns.Add((qs[rng.Next(qs.Length)], ans[rng.Next(ans.Length)]));
        rng.Shuffle(CollectionsMarshalSpan(turns));

        // Conversations of one to three question/answer turns, a third of them with a system message.
        for (int i = 0; i < turns.Count;)
        {
            int n = Math.Min(turns.Count - i, rng.Next(10) < 6 ? 1 : rng.Next(2, 4));
            var messages = new List<object>();
            if (rng.Next(3) == 0) messages.Add(new { role = "system", content = Systems[rng.Next(Systems.Length)] });
            for (int k = 0; k < n; k++)
            {
                messages.Add(new { role = "user", content = turns[i + k].Q });
                messages.Add(new { role = "assistant", content = turns[i + k].A });
            }
            lines.Add(JsonSerializer.Serialize(new { messages }, JsonOptions));
            chats++;
            i += n;
        }
        var all = lines.ToArray();
        rng.Shuffle(all);
        SmoaServe.Text.Tokenizers.AtomicFile.WriteAllText(outPath, string.Join('\n', all) + "\n");
        return (texts, chats);
    }

    /// <summary>
    /// Fine-tuning data in a format the corpus never uses: the same questions answered as a dictionary card
    /// ("Word: dog / Kind: noun / Meaning: ... / Example: ..."), for <paramref name="count"/> words chosen with the seed.
    /// </summary>
    public static int BuildCards(string wordnetDir, string outPath, int count, int seed = 7)
    {
        var senses = ReadSenseCounts(Path.Combine(wordnetDir, "cntlist.rev"));
        var candidates = new List<(Synset S, string Word)>();
        foreach (var (file, pos) in new[] { ("data.noun", 'n'), ("data.verb", 'v'), ("data.adj", 'a') })
            foreach (var s in ReadSynsets(Path.Combine(wordnetDir, file), pos, senses))
                for (int i = 0; i < s.Words.Length; i++)
                    if (s.FirstSense[i] && !s.Words[i].Contains(' ')) candidates.Add((s, s.Words[i]));
        var rng = new Random(seed);
        var chosen = candidates.OrderBy(_ => rng.Next()).Take(count).ToList();
        var lines = new List<string>();
        foreach (var (s, w) in chosen)
        {
            string kind = s.Pos switch { 'n' => "noun", 'v' => "verb", 'a' => "adjective", _ => "adverb" };
            var card = new StringBuilder($"Word: {w}\nKind: {kind}\nMeaning: {s.Definition}");
            if (s.Examples.Length > 0) card.Append($"\nExample: {Sentence(s.Examples[0])}");
            var messages = new object[]
            {
                new { role = "user", content = Question(s, w, rng) },
                new { role = "assistant", content = card.ToString() },
            };
            lines.Add(JsonSerializer.Serialize(new { messages }, JsonOptions));
        }
        SmoaServe.Text.Tokenizers.AtomicFile.WriteAllText(outPath, string.Join('\n', lines) + "\n");
        return lines.Count;
    }

    private static Span<(string, string)> CollectionsMarshalSpan(List<(string, string)> list) => System.Runtime.InteropServices.CollectionsMarshal.AsSpan(list);

    private static string Pick(Random rng, params string[] options) => options[rng.Next(options.Length)];

    private static string Question(Synset s, string w, Random rng) => s.Pos switch
    {
        'n' => Pick(rng, $"What is {NounPhrase(s, w)}?", $"What is {NounPhrase(s, w)}?", $"Can you tell me what {NounPhrase(s, w)} is?",
            $"What does the word \"{w}\" mean?", $"Tell me about {NounPhrase(s, w, definite: true)}.", $"Define {w}."),
        'v' => Pick(rng, $"What does it mean to {w}?", $"What does \"{w}\" mean?", $"Define the verb {w}."),
        _ => Pick(rng, $"What does \"{w}\" mean?", $"What is the meaning of \"{w}\"?", $"Define {w}."),
    };

    private static string Answer(Synset s, string w, Random rng)
    {
        var sb = new StringBuilder(DefinitionSentence(s, w));
        var others = s.Words.Where(x => x != w).Take(2).ToArray();
        if (others.Length > 0 && rng.Next(2) == 0)
            sb.Append(s.Pos == 'n' ? $" It is also called {string.Join(" or ", others)}." : $" A similar word is {others[0]}.");
        if (s.Examples.Length > 0 && rng.Next(3) != 0)
            sb.Append(Pick(rng, " For example: ", " You could say: ", " Example: ")).Append('"').Append(Sentence(s.Examples[0])).Append('"');
        return sb.ToString();
    }

    /// <summary>"A dog is a member of ...", "Bread is food made from ...", "To run means to move fast ...".</summary>
    private static string DefinitionSentence(Synset s, string w) => s.Pos switch
    {
        'n' => $"{Capitalize(NounPhrase(s, w))} is {s.Definition}.",
        'v' => $"To {w} means to {s.Definition}.",
        _ => $"{Capitalize(w)} means {s.Definition}.",
    };

    /// <summary>A countable-looking noun (its gloss starts with an article) gets "a"/"an" (or "the"); proper names and mass nouns none.</summary>
    private static string NounPhrase(Synset s, string w, bool definite = false)
    {
        if (char.IsUpper(w[0])) return w;
        bool countable = s.Definition.StartsWith("a ", StringComparison.Ordinal) || s.Definition.StartsWith("an ", StringComparison.Ordinal)
                         || s.Definition.StartsWith("any ", StringComparison.Ordinal);
        if (!countable) return w;
        if (definite) return "the " + w;
        return ("aeiou".Contains(w[0]) ? "an " : "a ") + w;
    }

    private static string Capitalize(string s) => s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..];

    /// <summary>An example phrase as a sentence: capitalised, ending in . ! or ?.</summary>
    private static string Sentence(string e)
    {
        e = Capitalize(e.Trim().Trim('"').Trim());
        return e.Length > 0 && ".!?".Contains(e[^1]) ? e : e + ".";
    }

    /// <summary>Sense-key prefix "lemma%ss_type:lex_filenum:lex_id:" → sense number (1 = most frequent sense of that lemma).</summary>
    private static Dictionary<string, int> ReadSenseCounts(string path)
    {
        var map = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var line in File.ReadLines(path))
        {
            var parts = line.Split(' ');
            if (parts.Length < 3 || !int.TryParse(parts[1], out int sense) || !int.TryParse(parts[2], out int count) || count < 1) continue;
            var key = parts[0];
            int colon = -1;
            for (int k = 0; k < 3 && colon < key.Length; k++) colon = key.IndexOf(':', colon + 1);
            if (colon < 0) continue;
            map.TryAdd(key[..(colon + 1)], sense);
        }
        return map;
    }

    private static IEnumerable<Synset> ReadSynsets(string path, char pos, Dictionary<string, int> senses)
    {
        foreach (var line in File.ReadLines(path))
        {
            if (line.StartsWith("  ", StringComparison.Ordinal)) continue; // licence header
            int bar = line.IndexOf(" | ", StringComparison.Ordinal);
            if (bar < 0) continue;
            var fields = line[..bar].Split(' ');
            if (fields.Length < 4) continue;
            string lexFile = fields[1];
            char ssType = fields[2][0];
            int count = int.Parse(fields[3], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
            var words = new List<string>();
            var first = new List<bool>();
            bool anyCounted = false;
            for (int i = 0; i < count; i++)
            {
                string raw = fields[4 + 2 * i];
                int lexId = int.Parse(fields[5 + 2 * i], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
                int paren = raw.IndexOf('(');
                string lemma = paren > 0 ? raw[..paren] : raw;
                char typeDigit = ssType switch { 'n' => '1', 'v' => '2', 'a' => '3', 'r' => '4', _ => '5' };
                string key = $"{lemma.ToLowerInvariant()}%{typeDigit}:{lexFile}:{lexId:00}:";
                bool counted = senses.TryGetValue(key, out int sense);
                anyCounted |= counted;
                if (words.Contains(lemma.Replace('_', ' '))) continue;
                words.Add(lemma.Replace('_', ' '));
                first.Add(counted && sense == 1);
            }
            if (!anyCounted) continue;
            var gloss = line[(bar + 3)..].Trim();
            var definitions = new List<string>();
            var examples = new List<string>();
            foreach (var part in gloss.Split("; ", StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            {
                if (part.StartsWith('"')) examples.Add(part.Trim('"'));
                else if (examples.Count == 0) definitions.Add(part);
            }
            if (definitions.Count == 0) continue;
            yield return new Synset(pos, words.ToArray(), string.Join("; ", definitions).TrimEnd('.', ' '), examples.Where(e => e.Length > 3).ToArray(), first.ToArray());
        }
    }
}
