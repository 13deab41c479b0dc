namespace SmoaServe.Text;

/// <summary>
/// Tokenizing with the work bounded by a token budget rather than by the text's length: a text that cannot fit is
/// recognised after tokenizing about as much of it as would fit, so a multi-megabyte prompt for a model with a few
/// thousand tokens of context costs milliseconds, not seconds and hundreds of megabytes of ids.
/// </summary>
public static class BoundedEncoding
{
    /// <summary>Characters tokenized per piece when a long text is counted (below the large-object heap's threshold).</summary>
    public const int ChunkChars = 16 * 1024;
    /// <summary>Tokens a cut between two pieces may add to the count (the pieces around the cut tokenized apart).</summary>
    public const int SlackPerCut = 16;

    /// <summary>
    /// The ids of <paramref name="text"/> when it has at most <paramref name="maxTokens"/> of them; otherwise null, with
    /// <paramref name="counted"/> a lower bound of the count that is already past the budget. A text of up to
    /// max(4096, 8 · (maxTokens + 1)) characters is tokenized whole (exact). A longer one is counted piece by piece
    /// (pieces of <see cref="ChunkChars"/> characters cut at whitespace, each tokenized on its own) and refused as soon as
    /// the count passes the budget plus <see cref="SlackPerCut"/> per cut (so a refusal never rests on the cuts); only a
    /// text whose pieces all fit within that is tokenized whole at the end.
    /// </summary>
    public static IReadOnlyList<int>? EncodeWithin(this ITextTokenizer tokenizer, string text, bool addSpecialTokens, int maxTokens, out int counted)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (maxTokens < 0) throw new ArgumentOutOfRangeException(nameof(maxTokens));
        long exactChars = Math.Max(4096L, 8L * (maxTokens + 1L));
        if (text.Length > exactChars && CountExceeds(tokenizer, text, maxTokens, out counted)) return null;
        var ids = tokenizer.Encode(text, addSpecialTokens);
        counted = ids.Count;
        return ids.Count <= maxTokens ? ids : null;
    }

    /// <summary>Counts the tokens of the pieces of <paramref name="text"/> until they certainly exceed <paramref name="maxTokens"/>.</summary>
    private static bool CountExceeds(ITextTokenizer tokenizer, string text, int maxTokens, out int counted)
    {
        counted = 0;
        int cuts = 0;
        for (int pos = 0; pos < text.Length;)
        {
            int end = CutAfter(text, pos);
            counted += tokenizer.Encode(text.Substring(pos, end - pos), addSpecialTokens: false).Count;
            if (end < text.Length) cuts++;
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
    private static int CutAfter(string text, int start)
    {
        int end = start + ChunkChars;
        if (end >= text.Length) return text.Length;
        for (int i = end; i > end - 512 && i > start; i--)
            if (char.IsWhiteSpace(text[i])) return i;
        return char.IsLowSurrogate(text[end]) ? end - 1 : end;
    }
}
