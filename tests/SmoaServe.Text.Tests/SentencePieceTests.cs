using System.Text;

namespace SmoaServe.Text.Tests;

/// <summary>A tokenizer.model written here byte by byte (protobuf wire format) with hand-derivable expectations.</summary>
public class SentencePieceTests
{
    // ids: 0 <unk>, 1 <s>, 2 </s>, 3..258 <0x00>..<0xFF>, then the pieces below in order
    const int Unk = 0, Bos = 1, Eos = 2, ByteBase = 3;
    static readonly (string Piece, float Score)[] Normal =
    [
        ("▁h", -3), ("ll", -1), ("he", -2), ("llo", -4), ("▁he", -5), ("▁w", -6), ("or", -7), ("ld", -8),
        ("▁", -10), ("h", -11), ("e", -12), ("l", -13), ("o", -14), ("w", -15), ("r", -16), ("d", -17),
    ];
    static int Id(string piece) => 259 + Array.FindIndex(Normal, p => p.Piece == piece);

    static byte[] Varint(ulong v)
    {
        var b = new List<byte>();
        do { var x = (byte)(v & 0x7F); v >>= 7; b.Add(v != 0 ? (byte)(x | 0x80) : x); } while (v != 0);
        return b.ToArray();
    }
    static byte[] Key(int field, int wire) => Varint((ulong)((field << 3) | wire));
    static byte[] VarintField(int field, ulong v) => [.. Key(field, 0), .. Varint(v)];
    static byte[] BytesField(int field, byte[] data) => [.. Key(field, 2), .. Varint((ulong)data.Length), .. data];
    static byte[] StringField(int field, string s) => BytesField(field, Encoding.UTF8.GetBytes(s));
    static byte[] FloatField(int field, float f) => [.. Key(field, 5), .. BitConverter.GetBytes(f)];

    /// <summary>SentencePiece {piece=1, score=2, type=3}; types: 1 NORMAL, 2 UNKNOWN, 3 CONTROL, 6 BYTE.</summary>
    static byte[] Piece(string text, float score, int type) => BytesField(1, [.. StringField(1, text), .. FloatField(2, score), .. VarintField(3, (ulong)type)]);

    internal static byte[] ModelProto(bool byteFallback)
    {
        var m = new List<byte>();
        m.AddRange(Piece("<unk>", 0, 2));
        m.AddRange(Piece("<s>", 0, 3));
        m.AddRange(Piece("</s>", 0, 3));
        for (var b = 0; b < 256; b++) m.AddRange(Piece($"<0x{b:X2}>", 0, 6));
        foreach (var (p, s) in Normal) m.AddRange(Piece(p, s, 1));
        // TrainerSpec: model_type (3) = BPE (2), byte_fallback (35)
        m.AddRange(BytesField(2, [.. VarintField(3, 2), .. VarintField(35, byteFallback ? 1UL : 0UL)]));
        // NormalizerSpec: name (1), add_dummy_prefix (3), remove_extra_whitespaces (4), escape_whitespaces (5)
        m.AddRange(BytesField(3, [.. StringField(1, "identity"), .. VarintField(3, 1), .. VarintField(4, 0), .. VarintField(5, 1)]));
        return m.ToArray();
    }

    static ITextTokenizer LoadModel(bool byteFallback = true, string? config = null)
    {
        using var dir = new TempModelDir().Write("tokenizer.model", ModelProto(byteFallback));
        if (config is not null) dir.Write("tokenizer_config.json", config);
        return TokenizerLoader.Load(dir.Path);
    }

    [Fact]
    public void MergesByScoreWithDummyPrefixAndAddsBos()
    {
        var tok = LoadModel();
        // "▁hello": ll(-1) → he(-2) → llo(-4) → ▁he(-5); ▁h(-3) never applies because "he" took the h first.
        // "▁world": ▁w(-6) → or(-7) → ld(-8).
        int[] expected = [Bos, Id("▁he"), Id("llo"), Id("▁w"), Id("or"), Id("ld")];
        Assert.Equal(expected, tok.Encode("hello world", addSpecialTokens: true));
        Assert.Equal(expected[1..], tok.Encode("hello world", addSpecialTokens: false));
        Assert.Equal("hello world", tok.Decode(expected));
        Assert.Equal("<s>hello world", tok.Decode(expected, skipSpecialTokens: false));
        Assert.Equal(Bos, tok.BosTokenId);
        Assert.Equal(Eos, tok.EosTokenId);
        Assert.Equal(259 + Normal.Length, tok.VocabSize);
    }

    [Fact]
    public void EqualScoresMergeLeftmostFirst()
    {
        // sentencepiece's agenda breaks score ties by the smaller left position: "▁lll" → ▁, ll, l (not ▁, l, ll)
        var tok = LoadModel();
        Assert.Equal([Id("▁"), Id("ll"), Id("l")], tok.Encode("lll", addSpecialTokens: false));
    }

    [Fact]
    public void UnknownCharactersFallBackToBytes()
    {
        var tok = LoadModel();
        // "▁hi€": ▁h merges; "i" and "€" (E2 82 AC) are not pieces → <0x69>, <0xE2>, <0x82>, <0xAC>
        int[] expected = [Id("▁h"), ByteBase + 0x69, ByteBase + 0xE2, ByteBase + 0x82, ByteBase + 0xAC];
        Assert.Equal(expected, tok.Encode("hi€", addSpecialTokens: false));
        Assert.Equal("hi€", tok.Decode(expected));

        var dec = tok.CreateStreamDecoder();
        var pieces = expected.Select(dec.Push).ToList();
        Assert.Equal(["h", "i", "", "", "€"], pieces);
        Assert.Equal("", dec.Flush());
    }

    [Fact]
    public void WithoutByteFallbackUnknownCharactersBecomeUnk()
    {
        var tok = LoadModel(byteFallback: false);
        Assert.Equal([Id("▁h"), Unk], tok.Encode("hi", addSpecialTokens: false));
    }

    [Fact]
    public void ControlTokensInTextAreMatchedAndEachChunkGetsTheDummyPrefix()
    {
        var tok = LoadModel();
        Assert.Equal([Id("▁he"), Id("llo"), Eos, Id("▁w"), Id("or"), Id("ld")], tok.Encode("hello</s>world", addSpecialTokens: false));
    }

    [Fact]
    public void TokenizerConfigControlsBosAndEos()
    {
        var tok = LoadModel(config: """{"add_bos_token": false, "add_eos_token": true, "bos_token": {"content": "<s>"}, "eos_token": "</s>"}""");
        Assert.Equal([Id("▁he"), Id("llo"), Eos], tok.Encode("hello", addSpecialTokens: true));
    }

    [Fact]
    public void AddedTokensFromTokenizerConfigAreMatchedBeforeSentencePiece()
    {
        var tok = LoadModel(config: """{"added_tokens_decoder": {"1": {"content": "<s>", "special": true}, "275": {"content": "<|im_end|>", "special": true}, "276": {"content": "wor", "special": false}}}""");
        // chunks "hello", <|im_end|>, "wor" (a plain added token), "ld"; each text chunk gets the dummy prefix (HF legacy)
        Assert.Equal([Id("▁he"), Id("llo"), 275, 276, Id("▁"), Id("ld")], tok.Encode("hello<|im_end|>world", addSpecialTokens: false));
        Assert.Equal(277, tok.VocabSize);
        Assert.Equal(275, tok.TokenToId("<|im_end|>"));
        // the dummy-prefix space is dropped at the start and after a special token
        Assert.Equal("hello<|im_end|>world", tok.Decode([Id("▁he"), Id("llo"), 275, Id("▁w"), Id("or"), Id("ld")], skipSpecialTokens: false));
    }

    [Fact]
    public void TruncatedModelIsAClearError()
    {
        using var dir = new TempModelDir().Write("tokenizer.model", ModelProto(true)[..1000]);
        var e = Assert.Throws<TokenizerFormatException>(() => TokenizerLoader.Load(dir.Path));
        Assert.Contains("tokenizer.model", e.Message);
    }

    [Fact]
    public void TokenizerJsonIsPreferredOverTokenizerModel()
    {
        using var dir = new TempModelDir().Write("tokenizer.model", ModelProto(true))
            .Write("tokenizer.json", File.ReadAllText(Path.Combine(SmoaServe.Tests.FixturePaths.LlamaA, "tokenizer.json")));
        Assert.Equal(1024, TokenizerLoader.Load(dir.Path).VocabSize);
    }
}
