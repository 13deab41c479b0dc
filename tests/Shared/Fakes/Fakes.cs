using System.Collections.Concurrent;
using System.Text;
using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Hosting;
using SmoaServe.Engine.Runner;
using SmoaServe.Text;

namespace SmoaServe.Tests;

/// <summary>Byte-level tokenizer: ids 0..255 are UTF-8 bytes, 256 = BOS, 257 = EOS.</summary>
public sealed class FakeTokenizer : ITextTokenizer
{
    public const int Bos = 256, Eos = 257;
    public int VocabSize => 258;
    public int? BosTokenId => Bos;
    public int? EosTokenId => Eos;

    public IReadOnlyList<int> Encode(string text, bool addSpecialTokens)
    {
        var ids = Encoding.UTF8.GetBytes(text).Select(b => (int)b).ToList();
        if (addSpecialTokens) ids.Insert(0, Bos);
        return ids;
    }

    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = true)
    {
        var d = CreateStreamDecoder(skipSpecialTokens);
        var sb = new StringBuilder();
        foreach (int id in ids) sb.Append(d.Push(id));
        return sb.Append(d.Flush()).ToString();
    }

    public IStreamDecoder CreateStreamDecoder(bool skipSpecialTokens = true) => new Stream(skipSpecialTokens);
    public int? TokenToId(string token) => token switch { "<bos>" => Bos, "<eos>" => Eos, _ => null };

    private sealed class Stream(bool skipSpecial) : IStreamDecoder
    {
        private readonly Decoder _utf8 = new UTF8Encoding(false, false).GetDecoder();
        public string Push(int id)
        {
            if (id >= 256) return skipSpecial ? "" : id == Bos ? "<bos>" : "<eos>";
            var chars = new char[4];
            int n = _utf8.GetChars([(byte)id], 0, 1, chars, 0, flush: false);
            return new string(chars, 0, n);
        }
        public string Flush()
        {
            var chars = new char[8];
            int n = _utf8.GetChars([], 0, 0, chars, 0, flush: true);
            return new string(chars, 0, n);
        }
    }
}

/// <summary>"role: content\n" per message, then "assistant: ".</summary>
public sealed class FakeChatTemplate : IChatTemplate
{
    public string Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt) =>
        string.Concat(messages.Select(m => $"{m.Role}: {m.Content}\n")) + (addGenerationPrompt ? "assistant: " : "");
}

/// <summary>
/// A deterministic stand-in for the model: keeps each slot's tokens (its "KV cache"), checks that the scheduler
/// feeds consistent positions, and predicts a printable byte from a hash of the slot's whole sequence and the
/// adapter. Records every call; optional delay per call and a gate that holds prefill (to freeze the scheduler).
/// </summary>
public sealed class FakeRunner : IModelRunner
{
    private readonly List<int>[] _slots;
    public ConcurrentQueue<string> Log { get; } = new();
    public HashSet<string> Adapters { get; } = new();
    public TimeSpan StepDelay { get; set; }
    public SemaphoreSlim? PrefillGate { get; set; }
    /// <summary>When set, every decode step waits for one permit.</summary>
    public SemaphoreSlim? DecodeGate { get; set; }
    public ManualResetEventSlim PrefillEntered { get; } = new(false);
    /// <summary>Returns the token to predict (or null for the hash rule) given the slot's tokens.</summary>
    public Func<IReadOnlyList<int>, int?>? Override { get; set; }
    public string? FailOnAdapter { get; set; }
    /// <summary>Decode steps with a row on this adapter fail (its prefill works).</summary>
    public string? FailDecodeOnAdapter { get; set; }
    public bool Disposed { get; private set; }
    public int? ModelThreadId { get; private set; }

    public FakeRunner(int slots = 4, int maxSeq = 256, int vocab = 258)
    {
        _slots = Enumerable.Range(0, slots).Select(_ => new List<int>()).ToArray();
        SlotCount = slots;
        MaxSequenceLength = maxSeq;
        VocabSize = vocab;
    }

    public int VocabSize { get; }
    public int MaxSequenceLength { get; }
    public int SlotCount { get; }
    public bool HasAdapter(string? adapterId) { lock (Adapters) return adapterId is null || Adapters.Contains(adapterId); }

    public float[] Prefill(int slot, ReadOnlySpan<int> tokens, int startPosition, string? adapterId)
    {
        CheckThread();
        Log.Enqueue($"P{slot}:{tokens.Length}");
        PrefillEntered.Set();
        PrefillGate?.Wait();
        if (StepDelay > TimeSpan.Zero) Thread.Sleep(StepDelay);
        if (adapterId is not null && adapterId == FailOnAdapter) throw new InvalidOperationException("injected failure");
        if (startPosition != _slots[slot].Count) throw new InvalidOperationException($"slot {slot}: prefill at {startPosition}, holds {_slots[slot].Count}");
        _slots[slot].AddRange(tokens.ToArray());
        return Logits(_slots[slot], adapterId);
    }

    /// <summary>Like the real runner: one call for all rows, and a failed call changes no slot.</summary>
    public float[][] PrefillBatch(IReadOnlyList<PrefillRow> rows)
    {
        CheckThread();
        Log.Enqueue($"B{rows.Count}");
        PrefillEntered.Set();
        PrefillGate?.Wait();
        if (StepDelay > TimeSpan.Zero) Thread.Sleep(StepDelay);
        if (rows.Select(r => r.Slot).Distinct().Count() != rows.Count) throw new InvalidOperationException("duplicate slot in a prefill batch");
        if (rows.Any(r => r.AdapterId is not null && r.AdapterId == FailOnAdapter)) throw new InvalidOperationException("injected failure");
        foreach (var r in rows)
            if (r.StartPosition != _slots[r.Slot].Count) throw new InvalidOperationException($"slot {r.Slot}: prefill at {r.StartPosition}, holds {_slots[r.Slot].Count}");
        return rows.Select(r =>
        {
            _slots[r.Slot].AddRange(r.Tokens);
            return Logits(_slots[r.Slot], r.AdapterId);
        }).ToArray();
    }

    public float[][] Decode(IReadOnlyList<DecodeRow> rows)
    {
        CheckThread();
        Log.Enqueue($"D{rows.Count}");
        DecodeGate?.Wait();
        if (StepDelay > TimeSpan.Zero) Thread.Sleep(StepDelay);
        if (rows.Select(r => r.Slot).Distinct().Count() != rows.Count) throw new InvalidOperationException("duplicate slot in a decode batch");
        // like the real runner, a failed step changes no slot
        if (rows.Any(r => r.AdapterId is not null && (r.AdapterId == FailOnAdapter || r.AdapterId == FailDecodeOnAdapter)))
            throw new InvalidOperationException("injected failure");
        return rows.Select(r =>
        {
            var seq = _slots[r.Slot];
            if (r.Position != seq.Count) throw new InvalidOperationException($"slot {r.Slot}: decode at {r.Position}, holds {seq.Count}");
            seq.Add(r.Token);
            return Logits(seq, r.AdapterId);
        }).ToArray();
    }

    public void FreeSlot(int slot)
    {
        Log.Enqueue($"F{slot}");
        _slots[slot].Clear();
    }

    public void Dispose() => Disposed = true;

    private float[] Logits(IReadOnlyList<int> seq, string? adapter)
    {
        int target = Override?.Invoke(seq) ?? PredictByHash(seq, adapter);
        var logits = new float[VocabSize];
        for (int i = 0; i < logits.Length; i++) logits[i] = (i * 7919 % 13) * 0.1f; // some spread for sampling
        logits[target] = 8f;
        return logits;
    }

    /// <summary>A printable ASCII byte ('a'..'z') from a hash of the sequence and adapter.</summary>
    public static int PredictByHash(IReadOnlyList<int> seq, string? adapter)
    {
        uint h = 2166136261;
        foreach (int t in seq) h = (h ^ (uint)t) * 16777619;
        foreach (char c in adapter ?? "") h = (h ^ c) * 16777619;
        return 'a' + (int)(h % 26);
    }

    private void CheckThread()
    {
        ModelThreadId ??= Environment.CurrentManagedThreadId;
        if (ModelThreadId != Environment.CurrentManagedThreadId) throw new InvalidOperationException("runner called from two threads");
    }
}

/// <summary>Backend over <see cref="FakeRunner"/>: an adapter directory is valid when it holds "adapter_config.json".</summary>
public sealed class FakeBackend(FakeRunner runner) : IEngineBackend
{
    public IModelRunner Runner => runner;
    public FakeRunner FakeRunner => runner;
    /// <summary>When set, every directory read waits for one permit (a slow disk).</summary>
    public SemaphoreSlim? ReadGate { get; set; }
    public int Reads => _reads;
    private int _reads;
    /// <summary>Device copies made (AddAdapter calls).</summary>
    public int DeviceLoads => _loads;
    private int _loads;

    public AdapterDefinition ReadAdapter(string directory)
    {
        Interlocked.Increment(ref _reads);
        ReadGate?.Wait();
        if (!File.Exists(Path.Combine(directory, "adapter_config.json"))) throw new InvalidDataException($"{directory}: no adapter_config.json");
        return Empty();
    }

    public AdapterInfo AddAdapter(string id, AdapterDefinition definition)
    {
        Interlocked.Increment(ref _loads);
        lock (runner.Adapters) runner.Adapters.Add(id);
        return new AdapterInfo(id, definition.Config.Kind, definition.Config.R, definition.Config.NumBlocks, definition.Config.BlockRanks,
            definition.Config.Scaling, [], 0, 0, 0, false);
    }

    public bool RemoveAdapter(string id) { lock (runner.Adapters) return runner.Adapters.Remove(id); }

    public IReadOnlyList<AdapterInfo> ResidentAdapters
    {
        get { lock (runner.Adapters) return runner.Adapters.Select(a => AddAdapterInfo(a)).ToList(); }
    }

    public void Dispose() => runner.Dispose();

    /// <summary>An adapter with no modules (what a fake adapter directory reads as).</summary>
    public static AdapterDefinition Empty() =>
        new(AdapterConfig.Lora(1, 1, [Engine.Model.Projection.Q]), new Dictionary<(int, Engine.Model.Projection), ModuleFactors>());

    private static AdapterInfo AddAdapterInfo(string id) => new(id, AdapterKind.Lora, 1, 1, [1], 1, ["q_proj"], 0, 0, 0, false);

    public static EngineSetup Spec(FakeRunner runner) =>
        new(new FakeTokenizer(), new FakeChatTemplate(), new HashSet<int> { FakeTokenizer.Eos }, () => new FakeBackend(runner));

    /// <summary>A setup over this backend instance (tests that watch its reads and loads).</summary>
    public static EngineSetup Spec(FakeBackend backend) =>
        new(new FakeTokenizer(), new FakeChatTemplate(), new HashSet<int> { FakeTokenizer.Eos }, () => backend);
}
