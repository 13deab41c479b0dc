using System.Collections.Concurrent;
using System.Numerics;

namespace SmoaServe.Text.Structured;

/// <summary>A set of token ids as bits (id i allowed ⇔ bit i set).</summary>
public sealed class TokenBitmask
{
    internal readonly ulong[] Words;

    public TokenBitmask(int size)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(size);
        Size = size;
        Words = new ulong[(size + 63) / 64];
    }

    public int Size { get; }

    public bool IsAllowed(int id) => (uint)id < (uint)Size && (Words[id >> 6] & (1UL << id)) != 0;

    public void Allow(int id)
    {
        if ((uint)id < (uint)Size) Words[id >> 6] |= 1UL << id;
    }

    public void Clear() => System.Array.Clear(Words);

    public int CountAllowed()
    {
        var n = 0;
        foreach (var w in Words) n += BitOperations.PopCount(w);
        return n;
    }

    public IEnumerable<int> AllowedIds()
    {
        for (var i = 0; i < Words.Length; i++)
            for (var w = Words[i]; w != 0; w &= w - 1) yield return i * 64 + BitOperations.TrailingZeroCount(w);
    }

    /// <summary>Sets every logit whose id is not allowed (including ids ≥ Size) to −∞.</summary>
    public void ApplyTo(Span<float> logits)
    {
        for (var i = 0; i < Words.Length && i * 64 < logits.Length; i++)
        {
            var w = Words[i];
            if (w == ulong.MaxValue) continue;
            int baseId = i * 64, n = Math.Min(64, logits.Length - baseId);
            if (w == 0) { logits.Slice(baseId, n).Fill(float.NegativeInfinity); continue; }
            for (var z = ~w; z != 0; z &= z - 1)
            {
                var j = BitOperations.TrailingZeroCount(z);
                if (j < n) logits[baseId + j] = float.NegativeInfinity;
            }
        }
        if (logits.Length > Size) logits[Size..].Fill(float.NegativeInfinity);
    }
}

/// <summary>
/// Per grammar and vocabulary: for an automaton state (count and depth normalised where they cannot matter within
/// one token), the tokens accepted without leaving the current frame, and the trie nodes where a token returns to
/// the (unknown) caller. Shared by all requests using the grammar; thread-safe.
/// </summary>
internal sealed class MaskCache(Grammar grammar, TokenVocabulary vocabulary)
{
    internal sealed record Entry(ulong[] Accepted, int[] ReturnNodes);

    /// <summary>Bytes of cached masks kept per grammar and vocabulary; past it, masks are computed without caching.</summary>
    const long MaxCachedBytes = 64L << 20;
    readonly int _maxEntries = (int)Math.Clamp(MaxCachedBytes / Math.Max(8, (vocabulary.Size + 63) / 64 * 8), 64, 1 << 16);
    readonly ConcurrentDictionary<(int State, int Count, int Depth), Entry> _entries = new();
    readonly ByteAutomaton _a = grammar.Automaton;
    readonly TokenTrie _trie = vocabulary.Trie;

    public int EntryCount => _entries.Count;

    public Entry Get(int state, int count, int depth)
    {
        int reach = vocabulary.MaxTokenBytes;                 // bytes (so count steps and pushes) within one token
        int keyCount = count >= _a.CountFloor[state] && (long)count + reach < _a.CountCeiling[state] ? -1 : count;
        int keyDepth = !_a.DepthBinds || _a.MaxDepth - depth > reach ? -1 : depth;
        var key = (state, keyCount, keyDepth);
        if (_entries.TryGetValue(key, out var entry)) return entry;
        entry = Compute(state, count, depth);
        if (_entries.Count < _maxEntries) _entries.TryAdd(key, entry);
        return entry;
    }

    Entry Compute(int state, int count, int depth)
    {
        var accepted = new ulong[(vocabulary.Size + 63) / 64];
        var returns = new List<int>();
        Walk(0, state, count, null, depth, accepted, returns);
        return new Entry(accepted, returns.ToArray());
    }

    /// <summary>
    /// Depth-first over the trie below <paramref name="node"/>, stepping the automaton by each child's byte; marks
    /// the ids of every node reached. With <paramref name="returns"/>, the stack is local (empty = unknown caller)
    /// and nodes needing the caller are collected instead of followed.
    /// </summary>
    public void Walk(int node, int state, int count, Frame? stack, int baseDepth, ulong[] accepted, List<int>? returns)
    {
        var trie = _trie;
        int end = trie.SubtreeEnd[node];
        ulong loop = _a.LoopCategories[state];
        ulong loopUtf8 = _a.Utf8Loop[state] ? loop | ByteCategories.NonAscii : loop;
        for (int child = node + 1; child < end; child = trie.SubtreeEnd[child])
        {
            ulong below = trie.SubtreeCategories[child];
            if (((below & ~loop) == 0 || ((below & ~loopUtf8) == 0 && trie.Utf8Valid[child]))
                && _a.LoopHolds(state, count, trie.Height[child]))
            {
                // every byte below loops back to this state: the whole subtree is accepted
                for (int t = trie.TokenStart[child], tEnd = trie.TokenStart[trie.SubtreeEnd[child]]; t < tEnd; t++)
                {
                    var id = trie.TokenIds[t];
                    accepted[id >> 6] |= 1UL << id;
                }
                continue;
            }
            if ((below & ~loop) == 0 && LoopBudget(state, count) is int budget)
            {
                // one byte = one counted character: the tokens within the remaining budget are accepted
                MarkWithin(child, budget, accepted);
                continue;
            }
            int s = state, c = count;
            var st = stack;
            var r = _a.Step(ref s, ref c, ref st, baseDepth, trie.Label[child], localStack: returns is not null);
            if (r == StepResult.Fail) continue;
            if (r == StepResult.NeedsParent) { returns!.Add(child); continue; }
            for (int t = trie.TokenStart[child], tEnd = trie.TokenStart[child + 1]; t < tEnd; t++)
            {
                var id = trie.TokenIds[t];
                accepted[id >> 6] |= 1UL << id;
            }
            if (trie.SubtreeEnd[child] > child + 1) Walk(child, s, c, st, baseDepth, accepted, returns);
        }
    }

    /// <summary>Bytes a counting self-loop still takes from <paramref name="count"/> (its state cannot return), or null.</summary>
    int? LoopBudget(int state, int count)
    {
        ref readonly var e = ref _a.LoopEdge[state];
        if (e.Op != CountOp.Increment || count < e.GuardLo || _a.Final[state]) return null;
        return (int)Math.Min(int.MaxValue, (long)e.GuardHi - count + 1);
    }

    /// <summary>Marks the ids of the nodes of <paramref name="node"/>'s subtree at most <paramref name="budget"/> bytes down (node included).</summary>
    void MarkWithin(int node, int budget, ulong[] accepted)
    {
        if (budget <= 0) return;
        var trie = _trie;
        for (int t = trie.TokenStart[node], tEnd = trie.TokenStart[node + 1]; t < tEnd; t++)
        {
            var id = trie.TokenIds[t];
            accepted[id >> 6] |= 1UL << id;
        }
        if (budget == 1) return;
        for (int child = node + 1, end = trie.SubtreeEnd[node]; child < end; child = trie.SubtreeEnd[child]) MarkWithin(child, budget - 1, accepted);
    }

    /// <summary>Continues the collected return nodes with the real caller frames.</summary>
    public void WalkReturns(Entry entry, Frame stack, ulong[] accepted)
    {
        var trie = _trie;
        foreach (var child in entry.ReturnNodes)
        {
            int s = stack.State, c = stack.Count;
            var st = stack.Parent;
            if (_a.Step(ref s, ref c, ref st, 0, trie.Label[child], localStack: false) != StepResult.Ok) continue;
            for (int t = trie.TokenStart[child], tEnd = trie.TokenStart[child + 1]; t < tEnd; t++)
            {
                var id = trie.TokenIds[t];
                accepted[id >> 6] |= 1UL << id;
            }
            if (trie.SubtreeEnd[child] > child + 1) Walk(child, s, c, st, 0, accepted, null);
        }
    }
}

/// <summary>
/// Follows one generated output through a grammar: which token ids may come next (a bitmask over the vocabulary,
/// stop ids only once the output is complete) and accepting the id that was sampled. Not thread-safe; one per
/// output sequence. The mask is never empty before completion for a vocabulary that has every single byte as a token.
/// </summary>
public sealed class GrammarMatcher
{
    readonly ByteAutomaton _a;
    readonly MaskCache _cache;
    int _state, _count;
    Frame? _stack;
    TokenBitmask? _scratch;

    public GrammarMatcher(Grammar grammar, TokenVocabulary vocabulary)
    {
        Grammar = grammar;
        Vocabulary = vocabulary;
        _a = grammar.Automaton;
        _cache = grammar.CacheFor(vocabulary);
        _state = _a.Start;
    }

    public Grammar Grammar { get; }
    public TokenVocabulary Vocabulary { get; }

    /// <summary>The output so far is a complete sentence of the grammar (a stop token may follow).</summary>
    public bool IsComplete => _a.IsComplete(_state, _stack);

    /// <summary>A stop token was accepted: the output is finished.</summary>
    public bool IsTerminated { get; private set; }

    /// <summary>Writes the ids allowed next into <paramref name="mask"/> (sized to the vocabulary).</summary>
    public void FillNextTokenMask(TokenBitmask mask)
    {
        if (mask.Size != Vocabulary.Size) throw new ArgumentException($"mask size {mask.Size} ≠ vocabulary size {Vocabulary.Size}");
        if (IsTerminated) { mask.Clear(); return; }
        var entry = _cache.Get(_state, _count, _stack?.Depth ?? 0);
        System.Array.Copy(entry.Accepted, mask.Words, mask.Words.Length);
        if (entry.ReturnNodes.Length > 0 && _stack is not null) _cache.WalkReturns(entry, _stack, mask.Words);
        if (IsComplete) foreach (var id in Vocabulary.StopTokenIds) mask.Allow(id);
    }

    public TokenBitmask NextTokenMask()
    {
        var mask = new TokenBitmask(Vocabulary.Size);
        FillNextTokenMask(mask);
        return mask;
    }

    /// <summary>Sets the logits of ids not allowed next to −∞ (ids beyond the vocabulary too).</summary>
    public void MaskLogits(Span<float> logits)
    {
        _scratch ??= new TokenBitmask(Vocabulary.Size);
        FillNextTokenMask(_scratch);
        _scratch.ApplyTo(logits);
    }

    /// <summary>Advances by one sampled id; false (and no change) when the grammar does not allow it.</summary>
    public bool Accept(int tokenId)
    {
        if (IsTerminated) return false;
        if (Vocabulary.IsStopToken(tokenId))
        {
            if (!IsComplete) return false;
            IsTerminated = true;
            return true;
        }
        var bytes = Vocabulary.TokenBytes(tokenId);
        return bytes.Length > 0 && AcceptBytes(bytes);
    }

    /// <summary>Advances by raw output bytes (e.g. a forced prefix); false (and no change) if they do not fit.</summary>
    public bool AcceptBytes(ReadOnlySpan<byte> bytes)
    {
        if (IsTerminated) return false;
        int s = _state, c = _count;
        var st = _stack;
        foreach (var b in bytes)
            if (_a.Step(ref s, ref c, ref st, 0, b, localStack: false) != StepResult.Ok) return false;
        (_state, _count, _stack) = (s, c, st);
        return true;
    }

    /// <summary>Whether <paramref name="tokenId"/> could be accepted now (without accepting it).</summary>
    public bool CanAccept(int tokenId)
    {
        if (IsTerminated) return false;
        if (Vocabulary.IsStopToken(tokenId)) return IsComplete;
        var bytes = Vocabulary.TokenBytes(tokenId);
        if (bytes.Length == 0) return false;
        int s = _state, c = _count;
        var st = _stack;
        foreach (var b in bytes)
            if (_a.Step(ref s, ref c, ref st, 0, b, localStack: false) != StepResult.Ok) return false;
        return true;
    }
}
