using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;
using SmoaServe.Tests;

namespace SmoaServe.Text.Tests;

/// <summary>
/// Independent reference: Microsoft.ML.Tokenizers' BpeTokenizer built from the fixture's vocab, merges, Llama-3 regex
/// and special tokens. On BMP-only text it reproduces HF (it matches expected_tokens.json), so the two must agree on
/// random mixtures of words, digits, whitespace runs, punctuation, accents, CJK and special tokens.
/// (Outside the BMP it splits surrogate pairs in the regex, which SmoaServe's code-point matching does not.)
/// </summary>
public class MlTokenizersCrossCheckTests
{
    static BpeTokenizer ReferenceBpe(out JsonElement expected)
    {
        var root = JsonDocument.Parse(File.ReadAllText(Path.Combine(FixturePaths.LlamaA, "tokenizer.json"))).RootElement;
        var model = root.GetProperty("model");
        var vocab = model.GetProperty("vocab").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetInt32());
        var merges = model.GetProperty("merges").EnumerateArray()
            .Select(m => m.ValueKind == JsonValueKind.Array ? (m[0].GetString()!, m[1].GetString()!) : Split(m.GetString()!)).ToList();
        var special = root.GetProperty("added_tokens").EnumerateArray()
            .ToDictionary(t => t.GetProperty("content").GetString()!, t => t.GetProperty("id").GetInt32());
        var pattern = root.GetProperty("pre_tokenizer").GetProperty("pretokenizers")[0].GetProperty("pattern").GetProperty("Regex").GetString()!;
        expected = JsonDocument.Parse(File.ReadAllText(Path.Combine(FixturePaths.LlamaA, "expected_tokens.json"))).RootElement;
        return BpeTokenizer.Create(new BpeOptions(vocab)
        {
            Merges = merges.Select(m => m.Item1 + " " + m.Item2),
            PreTokenizer = new RegexPreTokenizer(new Regex(pattern), special),
            SpecialTokens = special,
            ByteLevel = true,
        });
    }

    static (string, string) Split(string m) { var i = m.IndexOf(' '); return (m[..i], m[(i + 1)..]); }

    [Fact]
    public void ReferenceReproducesTheFixture()
    {
        var bpe = ReferenceBpe(out var expected);
        var texts = expected.GetProperty("texts").EnumerateArray().Select(e => e.GetString()!).ToArray();
        for (var i = 0; i < texts.Length; i++)
            Assert.Equal(expected.GetProperty("ids_no_special")[i].EnumerateArray().Select(e => e.GetInt32()), bpe.EncodeToIds(texts[i]));
    }

    [Fact]
    public void AgreesWithReferenceOnRandomText()
    {
        var bpe = ReferenceBpe(out _);
        var tok = TokenizerLoader.Load(FixturePaths.LlamaA);
        string[] atoms = ["the", " the", "The", "  ", "\n", "\n\n", "\t", " ", "'s", "'LL", "don't", "123", "45678", "3.14", "!!", "?",
            " ,", "...", "é", "naïve", "日本語", "–", "café", "Return", " items", "()", "{\"a\": 1}", "\r\n", "   \n", "<|eot_id|>",
            "<|begin_of_text|>", "<|", "|>", "ÿ", "\u00a0", "Ω", "ß", "x"];
        var rnd = new Random(1234);
        for (var n = 0; n < 1000; n++)
        {
            var sb = new StringBuilder();
            for (int k = 0, len = rnd.Next(1, 30); k < len; k++) sb.Append(atoms[rnd.Next(atoms.Length)]);
            var text = sb.ToString();
            Assert.True(bpe.EncodeToIds(text).SequenceEqual(tok.Encode(text, addSpecialTokens: false)), $"differs on {JsonSerializer.Serialize(text)}");
        }
    }
}
