using System.Text.Json;
using SmoaServe.Tests;

namespace SmoaServe.Text.Tests;

/// <summary>The byte-level BPE tokenizer.json of tests/fixtures/llama-a against HF's ids in expected_tokens.json.</summary>
public class FixtureTokenizerTests
{
    static readonly Lazy<ITextTokenizer> Tok = new(() => TokenizerLoader.Load(FixturePaths.LlamaA));
    static readonly Lazy<JsonElement> Expected = new(() =>
        JsonDocument.Parse(File.ReadAllText(Path.Combine(FixturePaths.LlamaA, "expected_tokens.json"))).RootElement);

    static string[] Texts => Expected.Value.GetProperty("texts").EnumerateArray().Select(e => e.GetString()!).ToArray();
    static int[] Ids(string key, int i) => Expected.Value.GetProperty(key)[i].EnumerateArray().Select(e => e.GetInt32()).ToArray();

    public static TheoryData<int> TextIndices() { var d = new TheoryData<int>(); for (var i = 0; i < 6; i++) d.Add(i); return d; }

    [Fact]
    public void FixtureHasSixTexts() => Assert.Equal(6, Texts.Length);

    [Theory, MemberData(nameof(TextIndices))]
    public void EncodeWithoutSpecialTokensMatchesHf(int i) =>
        Assert.Equal(Ids("ids_no_special", i), Tok.Value.Encode(Texts[i], addSpecialTokens: false));

    [Theory, MemberData(nameof(TextIndices))]
    public void EncodeWithSpecialTokensMatchesHf(int i) =>
        Assert.Equal(Ids("ids_with_special", i), Tok.Value.Encode(Texts[i], addSpecialTokens: true));

    [Theory, MemberData(nameof(TextIndices))]
    public void DecodeRoundTrips(int i)
    {
        Assert.Equal(Texts[i], Tok.Value.Decode(Ids("ids_no_special", i)));
        Assert.Equal(Texts[i], Tok.Value.Decode(Ids("ids_with_special", i), skipSpecialTokens: true));
        Assert.Equal("<|begin_of_text|>" + Texts[i], Tok.Value.Decode(Ids("ids_with_special", i), skipSpecialTokens: false));
    }

    [Fact]
    public void ChatPromptTextEncodesToHfIds()
    {
        var text = Expected.Value.GetProperty("chat_prompt_text").GetString()!;
        var ids = Expected.Value.GetProperty("chat_prompt_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        Assert.Equal(ids, Tok.Value.Encode(text, addSpecialTokens: false));
        Assert.Equal(text, Tok.Value.Decode(ids, skipSpecialTokens: false));
    }

    [Fact]
    public void SpecialTokenIdsComeFromTokenizerConfig()
    {
        Assert.Equal(1019, Tok.Value.BosTokenId);                       // bos_token <|begin_of_text|>
        Assert.Equal(1023, Tok.Value.EosTokenId);                       // eos_token <|eot_id|>
        Assert.Equal(1020, Tok.Value.TokenToId("<|end_of_text|>"));
        Assert.Null(Tok.Value.TokenToId("<|no such token|>"));
        Assert.Equal(1024, Tok.Value.VocabSize);
    }

    [Theory]
    [InlineData(2)] [InlineData(1)] [InlineData(0)]
    public void StreamDecoderNeverSplitsACharacterAndConcatenatesToTheFullDecode(int i)
    {
        var ids = Ids("ids_with_special", i);
        var dec = Tok.Value.CreateStreamDecoder();
        var pieces = ids.Select(dec.Push).ToList();
        pieces.Add(dec.Flush());
        Assert.DoesNotContain(pieces, p => p.Contains('\uFFFD'));
        Assert.Equal(Tok.Value.Decode(ids), string.Concat(pieces));
        Assert.Equal(Texts[i], string.Concat(pieces));
    }

    [Fact]
    public void StreamDecoderHoldsBackAPartialCharacter()
    {
        // "日本語" is split by the BPE into single bytes: the first byte alone must not produce output.
        var ids = Tok.Value.Encode("日", addSpecialTokens: false);
        Assert.True(ids.Count > 1);
        var dec = Tok.Value.CreateStreamDecoder();
        Assert.Equal("", dec.Push(ids[0]));
        var rest = string.Concat(ids.Skip(1).Select(dec.Push));
        Assert.Equal("日", rest);
        Assert.Equal("", dec.Flush());
    }

    [Fact]
    public void StreamDecoderKeepsSpecialTokensWhenAsked()
    {
        var dec = Tok.Value.CreateStreamDecoder(skipSpecialTokens: false);
        Assert.Equal("<|eot_id|>", dec.Push(1023));
        var skip = Tok.Value.CreateStreamDecoder();
        Assert.Equal("", skip.Push(1023));
    }

    [Fact]
    public void AddedTokensAreMatchedInsideText()
    {
        var ids = Tok.Value.Encode("Hi<|eot_id|>there", addSpecialTokens: false);
        Assert.Contains(1023, ids);
        Assert.Equal("Hi<|eot_id|>there", Tok.Value.Decode(ids, skipSpecialTokens: false));
        Assert.Equal("Hithere", Tok.Value.Decode(ids));
    }

    [Fact]
    public void PreTokenizerRegexMatchesCodePointsNotUtf16Units()
    {
        // Llama-3 pattern, alternative [^\r\n\p{L}\p{N}]?\p{L}+: the emoji (So) is the optional lead of "abc";
        // U+20000 (Lo, outside the BMP) is a letter, so " 𠀀x" is one piece.
        const string llama3 = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        var text = "🤖abc 𠀀x 𝟙𝟚𝟛𝟜";
        var pieces = new Tokenizers.CodePointRegex(llama3).Matches(text).Select(m => text.Substring(m.Start, m.Length)).ToArray();
        // 𝟙..𝟜 are Nd outside the BMP: \p{N}{1,3} takes three code points, then one
        Assert.Equal(["🤖abc", " 𠀀x", " ", "𝟙𝟚𝟛", "𝟜"], pieces);
    }

    [Fact]
    public void EmojiFollowedByLettersRoundTrips()
    {
        // the regex runs per code point: "🤖abc" must not split the emoji's surrogate pair
        var ids = Tok.Value.Encode("🤖abc 𠀀x", addSpecialTokens: false);
        Assert.Equal("🤖abc 𠀀x", Tok.Value.Decode(ids));
    }
}
