using SmoaServe.Engine.Runner;
using SmoaServe.Text;

namespace SmoaServe.Server;

/// <summary>A loaded checkpoint as the server needs it; created on the model thread, used there only.</summary>
public interface IModelBackend : IDisposable
{
    IModelRunner Runner { get; }
    /// <summary>Loads adapter <paramref name="name"/> from <paramref name="directory"/>, replacing one of that name.</summary>
    void LoadAdapter(string name, string directory);
    /// <summary>Unloads an adapter; false when it was not loaded.</summary>
    bool RemoveAdapter(string name);
}

/// <summary>What serving a model takes: its text side (no tensors) and a factory for the backend (run on the model thread).</summary>
public sealed class ModelSpec
{
    public required ITextTokenizer Tokenizer { get; init; }
    public IChatTemplate? ChatTemplate { get; init; }
    /// <summary>Ids that end generation (generation_config.json eos_token_id, else the tokenizer's EOS).</summary>
    public required IReadOnlySet<int> EosTokenIds { get; init; }
    public required Func<IModelBackend> CreateBackend { get; init; }
    /// <summary>Adapters the backend creates itself (synthetic benchmarks); served once the backend is up.</summary>
    public IReadOnlyList<string> BuiltInAdapters { get; init; } = [];
}

/// <summary>Hands the scheduler the backend's runner; disposing it disposes the whole backend.</summary>
internal sealed class OwnedRunner(IModelBackend backend) : IModelRunner
{
    private readonly IModelRunner _inner = backend.Runner;
    public int VocabSize => _inner.VocabSize;
    public int MaxSequenceLength => _inner.MaxSequenceLength;
    public int SlotCount => _inner.SlotCount;
    public bool HasAdapter(string? adapterId) => _inner.HasAdapter(adapterId);
    public float[] Prefill(int slot, ReadOnlySpan<int> tokens, int startPosition, string? adapterId) => _inner.Prefill(slot, tokens, startPosition, adapterId);
    public float[][] PrefillBatch(IReadOnlyList<PrefillRow> rows) => _inner.PrefillBatch(rows);
    public float[][] Decode(IReadOnlyList<DecodeRow> rows) => _inner.Decode(rows);
    public void FreeSlot(int slot) => _inner.FreeSlot(slot);
    public void Dispose() => backend.Dispose();
}
