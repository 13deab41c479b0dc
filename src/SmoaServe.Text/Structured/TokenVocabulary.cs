using System.Text;
using SmoaServe.Text.Tokenizers;

namespace SmoaServe.Text.Structured;

/// <summary>
/// A model's vocabulary as grammars see it, built once per model: the bytes each token id stands for (special
/// tokens and unused ids produce none, so a grammar never allows them), the ids that end generation (allowed only
/// once the grammar is complete), and a byte trie over all tokens, walked with the automaton to find allowed ids.
/// </summary>
public sealed class TokenVocabulary
{
    /// <summary>Tokens longer than this never match a grammar (keeps trie walks shallow).</summary>
    public const int MaxTokenBytesInTrie = 512;

    readonly byte[]?[] _bytes;
    readonly bool[] _stop;

    TokenVocabulary(byte[]?[] bytes, IEnumerable<int> stopTokenIds)
    {
        var stops = stopTokenIds.Distinct().ToArray();
        foreach (var id in stops)
            if (id < 0 || id > 10_000_000) throw new ArgumentOutOfRangeException(nameof(stopTokenIds), $"stop token id {id} is out of range");
        Size = Math.Max(bytes.Length, stops.Length == 0 ? 0 : stops.Max() + 1);
        _bytes = new byte[]?[Size];
        System.Array.Copy(bytes, _bytes, bytes.Length);
        _stop = new bool[Size];
        foreach (var id in stops) { _stop[id] = true; _bytes[id] = null; }
        StopTokenIds = stops.Order().ToArray();
        Trie = TokenTrie.Build(_bytes);
        MaxTokenBytes = Trie.MaxDepth;
    }

    /// <summary>Number of ids (masks cover ids 0..Size−1; logits beyond are always masked).</summary>
    public int Size { get; }

    /// <summary>Ids that end generation (EOS, end of turn): allowed only when the output is complete.</summary>
    public IReadOnlyList<int> StopTokenIds { get; }

    /// <summary>Length in bytes of the longest token in the trie.</summary>
    public int MaxTokenBytes { get; }

    /// <summary>Nodes of the byte trie over all tokens.</summary>
    public int TrieNodeCount => Trie.NodeCount;

    internal TokenTrie Trie { get; }

    public bool IsStopToken(int id) => (uint)id < (uint)Size && _stop[id];

    /// <summary>The bytes of a token, empty for special, stop or unused ids.</summary>
    public ReadOnlySpan<byte> TokenBytes(int id) => (uint)id < (uint)Size ? _bytes[id] : null;

    /// <summary>
    /// From a loaded tokenizer: exact bytes for this project's tokenizers (byte-level BPE pieces and SentencePiece
    /// byte pieces included); for other implementations the UTF-8 of each id decoded alone (partial characters lost).
    /// </summary>
    public static TokenVocabulary From(ITextTokenizer tokenizer, IEnumerable<int> stopTokenIds)
    {
        var bytes = new byte[]?[tokenizer.VocabSize];
        if (tokenizer is TokenizerBase known)
        {
            for (var id = 0; id < bytes.Length; id++) bytes[id] = known.TokenBytes(id, skipSpecialTokens: true);
        }
        else
        {
            for (var id = 0; id < bytes.Length; id++)
            {
                var text = tokenizer.Decode([id], skipSpecialTokens: true);
                bytes[id] = text.Length == 0 || text.Contains('\uFFFD') ? null : Encoding.UTF8.GetBytes(text);
            }
        }
        return new TokenVocabulary(bytes, stopTokenIds);
    }

    /// <summary>From raw token bytes by id (null = never generated under a grammar).</summary>
    public static TokenVocabulary FromTokenBytes(IReadOnlyList<byte[]?> bytesById, IEnumerable<int> stopTokenIds) =>
        new(bytesById.Select(b => b is { Length: > 0 } ? (byte[])b.Clone() : null).ToArray(), stopTokenIds);
}

/// <summary>
/// All token byte strings as a trie in preorder: node i's subtree is [i, SubtreeEnd[i]), its first child is i + 1,
/// the next sibling of a child c is SubtreeEnd[c]. Node 0 is the root (empty prefix).
/// </summary>
internal sealed class TokenTrie
{
    public required byte[] Label { get; init; }
    public required int[] SubtreeEnd { get; init; }
    public required int[] TokenStart { get; init; }       // [nodes + 1]: ids ending at node i are TokenIds[TokenStart[i]..TokenStart[i+1])
    public required int[] TokenIds { get; init; }
    public required int MaxDepth { get; init; }
    /// <summary>[node] the byte categories (<see cref="ByteCategories"/>) occurring in the node's subtree, its own byte included.</summary>
    public required ulong[] SubtreeCategories { get; init; }
    /// <summary>[node] bytes on the longest path from the node down, its own byte included.</summary>
    public required ushort[] Height { get; init; }
    /// <summary>[node] every path from the root through the node and below is valid (possibly truncated) UTF-8.</summary>
    public required bool[] Utf8Valid { get; init; }
    public int NodeCount => Label.Length;

    /// <summary>
    /// UTF-8 decoder (RFC 3629) state after byte <paramref name="b"/>: 0 = at a character boundary, 1–3 = that many
    /// continuation bytes due (any), 4 = E0 (A0–BF next), 5 = ED (80–9F), 6 = F0 (90–BF), 7 = F4 (80–8F); −1 invalid.
    /// </summary>
    internal static sbyte Utf8Step(sbyte state, byte b) => state switch
    {
        0 => b switch
        {
            < 0x80 => 0, >= 0xC2 and <= 0xDF => 1, 0xE0 => 4, >= 0xE1 and <= 0xEC => 2, 0xED => 5, >= 0xEE and <= 0xEF => 2,
            0xF0 => 6, >= 0xF1 and <= 0xF3 => 3, 0xF4 => 7, _ => -1,
        },
        1 or 2 or 3 => b is >= 0x80 and <= 0xBF ? (sbyte)(state - 1) : (sbyte)-1,
        4 => b is >= 0xA0 and <= 0xBF ? (sbyte)1 : (sbyte)-1,
        5 => b is >= 0x80 and <= 0x9F ? (sbyte)1 : (sbyte)-1,
        6 => b is >= 0x90 and <= 0xBF ? (sbyte)2 : (sbyte)-1,
        7 => b is >= 0x80 and <= 0x8F ? (sbyte)2 : (sbyte)-1,
        _ => -1,
    };

    public static TokenTrie Build(byte[]?[] bytesById)
    {
        var ids = Enumerable.Range(0, bytesById.Length)
            .Where(i => bytesById[i] is { Length: > 0 and <= TokenVocabulary.MaxTokenBytesInTrie })
            .ToArray();
        System.Array.Sort(ids, (x, y) =>
        {
            var c = bytesById[x].AsSpan().SequenceCompareTo(bytesById[y]);
            return c != 0 ? c : x.CompareTo(y);
        });

        var label = new List<byte> { 0 };
        var end = new List<int> { 0 };
        var owner = new List<int>();              // node of each id, in id order of `ids` (nondecreasing)
        var path = new List<int> { 0 };           // path[d] = node at depth d of the current token
        byte[] previous = [];
        int maxDepth = 0;
        foreach (var id in ids)
        {
            var b = bytesById[id]!;
            var common = 0;
            while (common < b.Length && common < previous.Length && b[common] == previous[common]) common++;
            while (path.Count > common + 1) { end[path[^1]] = label.Count; path.RemoveAt(path.Count - 1); }
            for (var d = common; d < b.Length; d++)
            {
                path.Add(label.Count);
                label.Add(b[d]);
                end.Add(0);
            }
            owner.Add(path[^1]);
            previous = b;
            maxDepth = Math.Max(maxDepth, b.Length);
        }
        while (path.Count > 0) { end[path[^1]] = label.Count; path.RemoveAt(path.Count - 1); }

        var tokenStart = new int[label.Count + 1];
        foreach (var node in owner) tokenStart[node + 1]++;
        for (var i = 0; i < label.Count; i++) tokenStart[i + 1] += tokenStart[i];

        // bottom-up (reverse preorder): categories and height of every subtree
        var categories = new ulong[label.Count];
        var height = new ushort[label.Count];
        for (var i = label.Count - 1; i >= 0; i--)
        {
            ulong cats = i == 0 ? 0 : 1UL << ByteCategories.Of(label[i]);
            int h = 0;
            for (var c = i + 1; c < end[i]; c = end[c]) { cats |= categories[c]; h = Math.Max(h, height[c]); }
            categories[i] = cats;
            height[i] = (ushort)(h + (i == 0 ? 0 : 1));
        }
        // top-down UTF-8 decoding along each path, then bottom-up: is every path below valid?
        var utf8 = new sbyte[label.Count];
        for (var i = 1; i < label.Count; i++) utf8[i] = -1;
        var parentOf = new int[label.Count];
        for (var i = 0; i < label.Count; i++)
            for (var c = i + 1; c < end[i]; c = end[c]) { parentOf[c] = i; }
        for (var i = 1; i < label.Count; i++)
            utf8[i] = utf8[parentOf[i]] < 0 ? (sbyte)-1 : Utf8Step(utf8[parentOf[i]], label[i]);
        var valid = new bool[label.Count];
        for (var i = label.Count - 1; i >= 0; i--)
        {
            var ok = utf8[i] >= 0;
            for (var c = i + 1; ok && c < end[i]; c = end[c]) ok = valid[c];
            valid[i] = ok;
        }
        return new TokenTrie
        {
            Label = label.ToArray(), SubtreeEnd = end.ToArray(), TokenStart = tokenStart, TokenIds = ids, MaxDepth = maxDepth,
            SubtreeCategories = categories, Height = height, Utf8Valid = valid,
        };
    }
}

/// <summary>
/// A fixed partition of bytes into categories that keeps apart what JSON grammars distinguish (quote, backslash,
/// brackets, digits, whitespace kinds, UTF-8 byte kinds); letters and other punctuation share categories. Used to
/// accept whole trie subtrees at once in states that loop on every byte of some categories (string bodies).
/// </summary>
internal static class ByteCategories
{
    public const int Count = 24;
    /// <summary>The categories of bytes ≥ 0x80 (UTF-8 lead and continuation bytes).</summary>
    public const ulong NonAscii = 0xFUL << 20;
    static readonly byte[] Table = Build();

    public static int Of(byte b) => Table[b];

    static byte[] Build()
    {
        var t = new byte[256];
        for (var b = 0; b < 256; b++)
        {
            t[b] = b switch
            {
                '\t' => 1, '\n' => 2, '\r' => 3, < 0x20 => 0,
                ' ' => 4, '"' => 5, '\\' => 6,
                >= '0' and <= '9' => 7,
                (>= 'a' and <= 'z') or (>= 'A' and <= 'Z') => 8,
                '{' => 9, '}' => 10, '[' => 11, ']' => 12, ':' => 13, ',' => 14, '-' => 15, '+' => 16, '.' => 17,
                < 0x7F => 18,
                0x7F => 19,
                < 0xC0 => 20,
                < 0xE0 => 21,
                < 0xF0 => 22,
                _ => 23,
            };
        }
        return t;
    }
}
