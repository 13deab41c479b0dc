namespace SmoaServe.Engine.Runner;

/// <summary>One row of a batched decode step: the sequence in KV slot <see cref="Slot"/> feeds <see cref="Token"/> at <see cref="Position"/>.</summary>
public readonly record struct DecodeRow(int Slot, int Token, int Position, string? AdapterId);

/// <summary>One row of a batched prefill: <see cref="Tokens"/> go into KV slot <see cref="Slot"/> from <see cref="StartPosition"/> on.</summary>
public readonly record struct PrefillRow(int Slot, int[] Tokens, int StartPosition, string? AdapterId);

/// <summary>
/// The model runner as seen by the scheduler and the command line: token ids in, float logits out. No tensors cross
/// this boundary. All calls must come from one thread (the runner's owner); implementations use TorchSharp inside.
/// </summary>
public interface IModelRunner : IDisposable
{
    int VocabSize { get; }
    /// <summary>Longest sequence (prompt + generated) a slot can hold.</summary>
    int MaxSequenceLength { get; }
    /// <summary>Number of KV-cache slots (concurrent sequences).</summary>
    int SlotCount { get; }

    /// <summary>True when the adapter id is loaded (null = base model, always true).</summary>
    bool HasAdapter(string? adapterId);

    /// <summary>
    /// Runs <paramref name="tokens"/> through the model starting at position <paramref name="startPosition"/> of slot
    /// <paramref name="slot"/> (chunked prefill: call again with the next chunk), filling its KV cache.
    /// Returns the logits of the last token [vocab].
    /// </summary>
    float[] Prefill(int slot, ReadOnlySpan<int> tokens, int startPosition, string? adapterId);

    /// <summary>
    /// Prefill chunks of several sequences (distinct slots, any adapters) in one forward where the runner can; returns
    /// each row's last-token logits [rows][vocab]. After an exception every row may be prefilled again from its start.
    /// </summary>
    float[][] PrefillBatch(IReadOnlyList<PrefillRow> rows) => rows.Select(r => Prefill(r.Slot, r.Tokens, r.StartPosition, r.AdapterId)).ToArray();

    /// <summary>One decode step for all rows at once (rows may use different adapters). Returns logits [rows][vocab].</summary>
    float[][] Decode(IReadOnlyList<DecodeRow> rows);

    /// <summary>Forgets slot's KV cache so the slot can be reused.</summary>
    void FreeSlot(int slot);

    /// <summary>
    /// Makes slot <paramref name="target"/> hold the first <paramref name="length"/> positions of slot
    /// <paramref name="source"/> (a shared prompt prefilled once, e.g. the n choices of one request), as if they had been
    /// prefilled into it. False when the runner cannot copy; the caller then prefills the target itself.
    /// </summary>
    bool CopySlotPrefix(int source, int target, int length) => false;
}
