namespace SmoaServe.Text;

/// <summary>
/// Tokenizing with the work bounded by a token budget rather than by the text's length: a text that cannot fit is
/// recognised after tokenizing about as much of it as would fit, so a multi-megabyte prompt for a model with a few
/// thousand tokens of context costs milliseconds, not seconds and hundreds of megabytes of ids.
/// </summary>
public static class BoundedEncoding
{
    /// <summary>Most characters tokenized per piece when a long text is counted (below the large-object heap's threshold);
    /// pieces are 6 characters per token of the budget (about 1.5 times the budget in English), at least 1024.</summary>
    public const int ChunkChars = 16 * 1024;
    /// <summary>Tokens a cut between two pieces may add to the count (the pieces around the cut tokenized apart).</summary>
    public const int SlackPerCut = 16;

    /// <summary>
    /// The ids of <paramref name="text"/> when it has at most <paramref name="maxTokens"/> of them; otherwise null, with
    /// <paramref name="counted"/> a lower bound of the count that is already past the budget. A text of up to
    /// max(4096, 8 · (maxTokens + 1)) characters is tokenized whole (exact). A longer one is counted piece by piece
    /// (pieces of up to <see cref="ChunkChars"/> characters cut at whitespace, each tokenized on its own) and refused as soon as
    /// the count passes the budget plus <see cref="SlackPerCut"/> per cut (so a refusal never rests on the cuts); only a
    /// text whose pieces all fit within that is tokenized whole at the end.
    /// </summary>
    public static IReadOnlyList<int>? EncodeWithin(this ITextTokenizer tokenizer, string text, bool addSpecialTokens, int maxTokens, out int counted) =>
        EncodeWithin(tokenizer, text, 0, text.Length, addSpecialTokens, maxTokens, out counted);

    /// <summary><see cref="EncodeWithin(ITextTokenizer, string, bool, int, out int)"/> of text[start, start + length) (no copy of a long text).</summary>
    public static IReadOnlyList<int>? EncodeWithin(this ITextTokenizer tokenizer, string text, int start, int length, bool addSpecialTokens, int maxTokens, out int counted)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (maxTokens < 0) throw new ArgumentOutOfRangeException(nameof(maxTokens));
        if ((uint)start > (uint)text.Length || (uint)length > (uint)(text.Length - start)) throw new ArgumentOutOfRangeException(nameof(length));
        long exactChars = Math.Max(4096L, 8L * (maxTokens + 1L));
        int chunk = (int)Math.Clamp(6L * (maxTokens + 1L), 1024, ChunkChars);
        if (length > exactChars && CountExceeds(tokenizer, text, start, start + length, chunk, maxTokens, out counted)) return null;
        var ids = tokenizer.Encode(start == 0 && length == text.Length ? text : text.Substring(start, length), addSpecialTokens);
        counted = ids.Count;
        return ids.Count <= maxTokens ? ids : null;
    }

    /// <summary>Counts the tokens of the pieces of <paramref name="text"/> until they certainly exceed <paramref name="maxTokens"/>.</summary>
    private static bool CountExceeds(ITextTokenizer tokenizer, string text, int from, int to, int chunk, int maxTokens, out int counted)
    {
        counted = 0;
        int cuts = 0;
        for (int pos = from; pos < to;)
        {
            int end = CutAfter(text, pos, to, chunk);
            counted += tokenizer.Encode(text.Substring(pos, end - pos), addSpecialTokens: false).Count;
            if (end < to) cuts++;
            if ((long)counted > (long)maxTokens + (long)SlackPerCut * cuts)
            {
                counted -= SlackPerCut * cuts;
                return true;
            }
            pos = end;
        }
        counted = 0;
        return false;
    }

    /// <summary>End of the piece starting at <paramref name="start"/>: about <see cref="ChunkChars"/> on, just before a
    /// whitespace character when one is near (pre-tokenizers split there), never inside a surrogate pair.</summary>
    private static int CutAfter(string text, int start, int to, int chunk)
    {
        int end = start + chunk;
        if (end >= to) return to;
        for (int i = end; i > end - 256 && i > start; i--)
            if (char.IsWhiteSpace(text[i])) return i;
        return char.IsLowSurrogate(text[end]) ? end - 1 : end;
    }
}
