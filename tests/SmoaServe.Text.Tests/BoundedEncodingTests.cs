using SmoaServe.Tests;

namespace SmoaServe.Text.Tests;

/// <summary>Tokenizing within a token budget: exact ids when the text fits, a refusal after a bounded amount of work when it cannot.</summary>
public class BoundedEncodingTests
{
    private static readonly Lazy<ITextTokenizer> Llama = new(() => TokenizerLoader.Load(FixturePaths.LlamaA));

    /// <summary>Wraps a tokenizer and counts the characters it was asked to tokenize.</summary>
    private sealed class Counting(ITextTokenizer inner) : ITextTokenizer
    {
        public long Chars;
        public int VocabSize => inner.VocabSize;
        public int? BosTokenId => inner.BosTokenId;
        public int? EosTokenId => inner.EosTokenId;
        public IReadOnlyList<int> Encode(string text, bool addSpecialTokens) { Chars += text.Length; return inner.Encode(text, addSpecialTokens); }
        public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = true) => inner.Decode(ids, skipSpecialTokens);
        public IStreamDecoder CreateStreamDecoder(bool skipSpecialTokens = true) => inner.CreateStreamDecoder(skipSpecialTokens);
        public int? TokenToId(string token) => inner.TokenToId(token);
    }

    /// <summary>One id per whitespace-separated word, whatever its length (many characters per token).</summary>
    private sealed class Words : ITextTokenizer
    {
        public int VocabSize => 2;
        public int? BosTokenId => 1;
        public int? EosTokenId => null;
        public IReadOnlyList<int> Encode(string text, bool addSpecialTokens) =>
            (addSpecialTokens ? [1] : new List<int>()).Concat(text.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(_ => 0)).ToList();
        public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = true) => "";
        public IStreamDecoder CreateStreamDecoder(bool skipSpecialTokens = true) => throw new NotSupportedException();
        public int? TokenToId(string token) => null;
    }

    private static string Prose(int chars)
    {
        var sb = new System.Text.StringBuilder();
        while (sb.Length < chars) sb.Append("The history of the city begins with a small settlement by the river. ");
        return sb.ToString(0, chars);
    }

    [Theory]
    [InlineData(100, 511)]
    [InlineData(3000, 2000)]
    [InlineData(20_000, 100_000)]
    public void A_text_that_fits_gets_exactly_its_ids(int chars, int budget)
    {
        string text = Prose(chars);
        var ids = Llama.Value.EncodeWithin(text, addSpecialTokens: true, budget, out int counted);
        Assert.Equal(Llama.Value.Encode(text, addSpecialTokens: true), ids);
        Assert.Equal(ids!.Count, counted);
    }

    [Fact]
    public void The_budget_is_exact_at_its_boundary()
    {
        string text = Prose(1500);
        int n = Llama.Value.Encode(text, false).Count;
        Assert.NotNull(Llama.Value.EncodeWithin(text, false, n, out _));
        Assert.Null(Llama.Value.EncodeWithin(text, false, n - 1, out int counted));
        Assert.Equal(n, counted);
    }

    [Fact]
    public void A_4_MB_text_is_refused_after_tokenizing_a_few_thousand_characters()
    {
        var tokenizer = new Counting(Llama.Value);
        string text = Prose(4_000_000);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        Assert.Null(tokenizer.EncodeWithin(text, addSpecialTokens: true, 511, out int counted));
        Assert.True(counted > 511);
        Assert.True(tokenizer.Chars <= 4 * 3072, $"{tokenizer.Chars} characters tokenized");
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(1), $"{clock.Elapsed.TotalMilliseconds:F0} ms");
    }

    /// <summary>A long text with few tokens (long words) is counted piece by piece, found to fit, and then tokenized whole.</summary>
    [Fact]
    public void A_long_text_with_few_tokens_is_counted_then_encoded_whole()
    {
        string word = new string('w', 40) + " ";
        string text = string.Concat(Enumerable.Repeat(word, 2_000));        // 82,000 characters, 2,000 tokens
        var tokenizer = new Counting(new Words());
        var ids = tokenizer.EncodeWithin(text, addSpecialTokens: true, 2_500, out int counted);
        Assert.Equal(2_001, ids!.Count);
        Assert.Equal(2_001, counted);
        Assert.Null(new Words().EncodeWithin(text, addSpecialTokens: false, 1_500, out _));
        // a range of a longer string: as the substring
        Assert.Equal(101, new Words().EncodeWithin("  " + text + "  ", 2, 100 * word.Length, addSpecialTokens: true, 2_500, out _)!.Count);
    }
}
