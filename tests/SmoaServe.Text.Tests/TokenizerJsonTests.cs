using System.Text.Json;

namespace SmoaServe.Text.Tests;

/// <summary>A Llama-2 style tokenizer.json (Prepend/Replace normalizer, byte fallback, Replace/ByteFallback/Fuse/Strip decoder) built here.</summary>
public class TokenizerJsonTests
{
    static string Llama2StyleJson()
    {
        var vocab = new Dictionary<string, int> { ["<unk>"] = 0, ["<s>"] = 1, ["</s>"] = 2 };
        for (var b = 0; b < 256; b++) vocab[$"<0x{b:X2}>"] = 3 + b;
        foreach (var p in new[] { "▁", "h", "e", "l", "o", "he", "▁he", "ll", "llo" }) vocab[p] = vocab.Count;
        var json = new
        {
            version = "1.0",
            added_tokens = new object[]
            {
                new { id = 0, content = "<unk>", special = true, lstrip = false, rstrip = false, normalized = false, single_word = false },
                new { id = 1, content = "<s>", special = true, lstrip = false, rstrip = false, normalized = false, single_word = false },
                new { id = 2, content = "</s>", special = true, lstrip = false, rstrip = false, normalized = false, single_word = false },
            },
            normalizer = new
            {
                type = "Sequence",
                normalizers = new object[]
                {
                    new { type = "Prepend", prepend = "▁" },
                    new { type = "Replace", pattern = new { String = " " }, content = "▁" },
                },
            },
            pre_tokenizer = (object?)null,
            post_processor = new
            {
                type = "TemplateProcessing",
                single = new object[] { new { SpecialToken = new { id = "<s>", type_id = 0 } }, new { Sequence = new { id = "A", type_id = 0 } } },
                pair = Array.Empty<object>(),
                special_tokens = new Dictionary<string, object> { ["<s>"] = new { id = "<s>", ids = new[] { 1 }, tokens = new[] { "<s>" } } },
            },
            decoder = new
            {
                type = "Sequence",
                decoders = new object[]
                {
                    new { type = "Replace", pattern = new { String = "▁" }, content = " " },
                    new { type = "ByteFallback" },
                    new { type = "Fuse" },
                    new { type = "Strip", content = " ", start = 1, stop = 0 },
                },
            },
            model = new
            {
                type = "BPE", dropout = (object?)null, unk_token = "<unk>", fuse_unk = true, byte_fallback = true, ignore_merges = false,
                vocab,
                merges = new[] { "l l", "h e", "▁ he", "ll o" },
            },
        };
        return JsonSerializer.Serialize(json);
    }

    [Fact]
    public void Llama2StyleTokenizerJson()
    {
        using var dir = new TempModelDir().Write("tokenizer.json", Llama2StyleJson())
            .Write("tokenizer_config.json", """{"bos_token": "<s>", "eos_token": "</s>"}""");
        var tok = TokenizerLoader.Load(dir.Path);
        int he = 259 + 6, llo = 259 + 8, space = 259, h = 260;
        // "▁hello": l l (rank 0) → h e (1) → ▁ he (2) → ll o (3)
        Assert.Equal([1, he, llo], tok.Encode("hello", addSpecialTokens: true));
        // "▁hi": "i" is not in the vocab → <0x69>
        Assert.Equal([space, h, 3 + 0x69], tok.Encode("hi", addSpecialTokens: false));
        Assert.Equal("hello", tok.Decode([1, he, llo]));
        Assert.Equal("hi", tok.Decode([space, h, 3 + 0x69]));
        Assert.Equal("hello hi", tok.Decode([he, llo, space, h, 3 + 0x69]));
        Assert.Equal(1, tok.BosTokenId);
        Assert.Equal(2, tok.EosTokenId);
    }

    [Fact]
    public void AddBosAndEosFromTokenizerConfigOverrideThePostProcessor()
    {
        using var dir = new TempModelDir().Write("tokenizer.json", Llama2StyleJson())
            .Write("tokenizer_config.json", """{"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": false, "add_eos_token": true}""");
        var tok = TokenizerLoader.Load(dir.Path);
        Assert.Equal([259 + 6, 259 + 8, 2], tok.Encode("hello", addSpecialTokens: true));
    }

    [Fact]
    public void MissingTokenizerNamesTheFiles()
    {
        using var dir = new TempModelDir();
        var e = Assert.Throws<FileNotFoundException>(() => TokenizerLoader.Load(dir.Path));
        Assert.Contains("tokenizer.json", e.Message);
        Assert.Contains("tokenizer.model", e.Message);
    }

    [Theory]
    [InlineData("{not json", "not valid JSON")]
    [InlineData("""{"model": {"type": "Unigram", "vocab": []}}""", "model type 'Unigram' is not supported")]
    [InlineData("""{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}}""", "merge #0")]
    [InlineData("""{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "Whatever"}}""", "unsupported pre_tokenizer type 'Whatever'")]
    public void MalformedTokenizerJsonIsAClearError(string json, string message)
    {
        using var dir = new TempModelDir().Write("tokenizer.json", json);
        var e = Assert.Throws<TokenizerFormatException>(() => TokenizerLoader.Load(dir.Path));
        Assert.Contains(message, e.Message);
        Assert.Contains("tokenizer.json", e.Message);
    }

    [Fact]
    public void BosTokenMissingFromVocabIsAClearError()
    {
        using var dir = new TempModelDir().Write("tokenizer.json", Llama2StyleJson())
            .Write("tokenizer_config.json", """{"bos_token": "<|nope|>"}""");
        var e = Assert.Throws<TokenizerFormatException>(() => TokenizerLoader.Load(dir.Path));
        Assert.Contains("bos_token '<|nope|>'", e.Message);
    }
}
