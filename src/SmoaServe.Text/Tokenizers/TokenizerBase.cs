using System.Text;

namespace SmoaServe.Text.Tokenizers;

/// <summary>
/// Decoding shared by both tokenizer kinds: every id maps to the bytes it stands for; the decoder may drop
/// a fixed number of leading spaces from the first emitted token (SentencePiece's dummy prefix).
/// </summary>
internal abstract class TokenizerBase : ITextTokenizer
{
    protected byte[]?[] BytesById = [];          // [vocab] bytes of each token, null for an unused id
    protected bool[] SpecialById = [];           // [vocab] skipped by skipSpecialTokens
    protected int LeadingSpacesToStrip;          // stripped from the first emitted token
    protected bool StripAfterSpecial;            // ... and from the first token after an emitted special token (HF slow SentencePiece)
    protected Dictionary<string, int> IdByToken = new(StringComparer.Ordinal);

    public int VocabSize => BytesById.Length;
    public int? BosTokenId { get; protected set; }
    public int? EosTokenId { get; protected set; }

    public abstract IReadOnlyList<int> Encode(string text, bool addSpecialTokens);

    public int? TokenToId(string token) => IdByToken.TryGetValue(token, out var id) ? id : null;

    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = true)
    {
        var bytes = new List<byte>();
        var segmentStart = true;
        foreach (var id in ids)
        {
            var b = TokenBytes(id, skipSpecialTokens);
            if (b is null) continue;
            bytes.AddRange(segmentStart ? StripLeadingSpaces(b) : b);
            segmentStart = StartsSegment(id);
        }
        return Encoding.UTF8.GetString(bytes.ToArray());
    }

    public IStreamDecoder CreateStreamDecoder(bool skipSpecialTokens = true) => new Utf8StreamDecoder(this, skipSpecialTokens);

    /// <summary>The bytes of one id, or null when it is skipped (special or out of range).</summary>
    internal byte[]? TokenBytes(int id, bool skipSpecialTokens)
    {
        if ((uint)id >= (uint)BytesById.Length) return null;
        if (skipSpecialTokens && SpecialById[id]) return null;
        return BytesById[id];
    }

    /// <summary>Whether the token after <paramref name="id"/> (an emitted token) gets its leading space stripped.</summary>
    internal bool StartsSegment(int id) => StripAfterSpecial && SpecialById[id];

    internal ReadOnlySpan<byte> StripLeadingSpaces(byte[] b)
    {
        var n = 0;
        while (n < LeadingSpacesToStrip && n < b.Length && b[n] == (byte)' ') n++;
        return b.AsSpan(n);
    }

    /// <summary>Grows the decode tables to hold <paramref name="size"/> ids.</summary>
    protected void EnsureCapacity(int size)
    {
        if (BytesById.Length >= size) return;
        Array.Resize(ref BytesById, size);
        Array.Resize(ref SpecialById, size);
    }
}

/// <summary>Feeds ids one at a time and emits only complete UTF-8 characters.</summary>
internal sealed class Utf8StreamDecoder(TokenizerBase tokenizer, bool skipSpecialTokens) : IStreamDecoder
{
    readonly List<byte> _pending = new();
    bool _segmentStart = true;

    public string Push(int id)
    {
        var b = tokenizer.TokenBytes(id, skipSpecialTokens);
        if (b is null) return "";
        if (_segmentStart) _pending.AddRange(tokenizer.StripLeadingSpaces(b).ToArray());
        else _pending.AddRange(b);
        _segmentStart = tokenizer.StartsSegment(id);
        var complete = CompletePrefixLength(_pending);
        if (complete == 0) return "";
        var text = Encoding.UTF8.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_pending)[..complete]);
        _pending.RemoveRange(0, complete);
        return text;
    }

    public string Flush()
    {
        var text = Encoding.UTF8.GetString(_pending.ToArray());
        _pending.Clear();
        return text;
    }

    /// <summary>Length of the prefix that ends on a character boundary: holds back a trailing, still incomplete multi-byte sequence.</summary>
    internal static int CompletePrefixLength(List<byte> bytes)
    {
        var n = bytes.Count;
        for (var back = 1; back <= Math.Min(4, n); back++)
        {
            var b = bytes[n - back];
            if ((b & 0xC0) == 0x80) continue;               // continuation byte: keep looking for the lead
            var need = b >= 0xF0 && b <= 0xF4 ? 4 : b >= 0xE0 && b < 0xF0 ? 3 : b >= 0xC2 && b < 0xE0 ? 2 : 1;
            return back < need ? n - back : n;              // lead byte still waiting for continuation bytes
        }
        return n;                                           // only continuation bytes: invalid, emit as is
    }
}
