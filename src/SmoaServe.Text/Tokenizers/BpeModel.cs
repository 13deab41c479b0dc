using System.Collections.Concurrent;
using System.Text;

namespace SmoaServe.Text.Tokenizers;

/// <summary>HF tokenizers' BPE model: initial symbols per code point, then merges by rank (lowest first, leftmost on ties).</summary>
internal sealed class BpeModel
{
    readonly Dictionary<string, int> _vocab;
    readonly Dictionary<(int Left, int Right), (int Rank, int Id)> _merges;
    readonly bool _ignoreMerges, _byteFallback, _fuseUnk;
    readonly int? _unkId;
    readonly ConcurrentDictionary<string, int[]> _cache = new(StringComparer.Ordinal);
    const int CacheLimit = 50_000;
    const int CachedWordMaxLength = 256;

    public BpeModel(Dictionary<string, int> vocab, Dictionary<(int, int), (int, int)> merges,
                    bool ignoreMerges, bool byteFallback, bool fuseUnk, int? unkId)
    {
        _vocab = vocab; _merges = merges; _ignoreMerges = ignoreMerges;
        _byteFallback = byteFallback; _fuseUnk = fuseUnk; _unkId = unkId;
    }

    public void EncodeWord(string word, List<int> output)
    {
        if (word.Length == 0) return;
        if (_ignoreMerges && _vocab.TryGetValue(word, out var whole)) { output.Add(whole); return; }
        if (word.Length <= CachedWordMaxLength && _cache.TryGetValue(word, out var cached)) { output.AddRange(cached); return; }
        var ids = Merge(InitialSymbols(word));
        if (word.Length <= CachedWordMaxLength)
        {
            if (_cache.Count >= CacheLimit) _cache.Clear();
            _cache[word] = ids;
        }
        output.AddRange(ids);
    }

    /// <summary>One symbol per code point; unknown ones become byte tokens (byte_fallback) or unk (fused when fuse_unk).</summary>
    List<int> InitialSymbols(string word)
    {
        var symbols = new List<int>(word.Length);
        var lastWasUnk = false;
        for (var i = 0; i < word.Length;)
        {
            var len = char.IsHighSurrogate(word[i]) && i + 1 < word.Length && char.IsLowSurrogate(word[i + 1]) ? 2 : 1;
            var s = word.Substring(i, len);
            i += len;
            if (_vocab.TryGetValue(s, out var id)) { symbols.Add(id); lastWasUnk = false; continue; }
            if (_byteFallback && TryByteTokens(s, symbols)) { lastWasUnk = false; continue; }
            if (_unkId is int unk)
            {
                if (!(_fuseUnk && lastWasUnk)) symbols.Add(unk);
                lastWasUnk = true;
            }
        }
        return symbols;
    }

    bool TryByteTokens(string s, List<int> symbols)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        var ids = new int[bytes.Length];
        for (var k = 0; k < bytes.Length; k++)
            if (!_vocab.TryGetValue($"<0x{bytes[k]:X2}>", out ids[k])) return false;
        symbols.AddRange(ids);
        return true;
    }

    /// <summary>Applies merges lowest rank first, leftmost among equal ranks (HF Word::merge_all without dropout).</summary>
    int[] Merge(List<int> symbols)
    {
        var n = symbols.Count;
        if (n < 2) return symbols.ToArray();
        var id = symbols.ToArray();
        var prev = new int[n];
        var next = new int[n];
        var alive = new bool[n];
        for (var i = 0; i < n; i++) { prev[i] = i - 1; next[i] = i + 1 < n ? i + 1 : -1; alive[i] = true; }
        var queue = new PriorityQueue<(int Pos, int NewId), (int Rank, int Pos)>();
        for (var i = 0; i + 1 < n; i++) Enqueue(queue, i, id[i], id[i + 1]);
        while (queue.TryDequeue(out var top, out _))
        {
            var pos = top.Pos;
            if (!alive[pos] || next[pos] < 0) continue;
            var right = next[pos];
            if (!_merges.TryGetValue((id[pos], id[right]), out var m) || m.Id != top.NewId) continue;
            id[pos] = m.Id;
            alive[right] = false;
            next[pos] = next[right];
            if (next[pos] >= 0) prev[next[pos]] = pos;
            if (prev[pos] >= 0) Enqueue(queue, prev[pos], id[prev[pos]], id[pos]);
            if (next[pos] >= 0) Enqueue(queue, pos, id[pos], id[next[pos]]);
        }
        var result = new List<int>(n);
        for (var i = 0; i >= 0; i = next[i]) result.Add(id[i]);
        return result.ToArray();
    }

    void Enqueue(PriorityQueue<(int, int), (int, int)> queue, int pos, int left, int right)
    {
        if (_merges.TryGetValue((left, right), out var m)) queue.Enqueue((pos, m.Id), (m.Rank, pos));
    }
}
