using SmoaServe.Engine.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Runner;

/// <summary>
/// <see cref="IModelRunner"/> over a <see cref="LlamaModel"/> and a KV cache of <see cref="SlotCount"/> ×
/// <see cref="MaxSequenceLength"/>. Prefill runs one slot (chunked via startPosition); decode runs all rows in one
/// forward, each row at its own position (per-row masks). Adapters come from an optional <see cref="IAdapterSource"/>,
/// one <see cref="IAdapterBatch"/> per forward. Call from one thread only.
/// </summary>
public sealed class ModelRunner : IModelRunner
{
    private readonly LlamaModel _model;
    private readonly KvCache _cache;
    private readonly IAdapterSource? _adapters;
    private readonly int[] _lengths; // tokens held by each slot
    private readonly int[] _written; // positions of each slot that may hold non-zero KV entries (its tokens and padding)

    public int VocabSize => _model.Config.VocabSize;
    public int MaxSequenceLength { get; }
    public int SlotCount { get; }
    public LlamaModel Model => _model;

    public ModelRunner(LlamaModel model, int slotCount, int maxSequenceLength, IAdapterSource? adapters = null)
    {
        if (slotCount <= 0) throw new ArgumentOutOfRangeException(nameof(slotCount), "at least one slot");
        if (maxSequenceLength <= 0) throw new ArgumentOutOfRangeException(nameof(maxSequenceLength), "must be positive");
        _model = model;
        _adapters = adapters;
        SlotCount = slotCount;
        MaxSequenceLength = maxSequenceLength;
        _lengths = new int[slotCount];
        _written = new int[slotCount];
        var c = model.Config;
        _cache = new KvCache(c.NumLayers, slotCount, c.NumKvHeads, maxSequenceLength, c.HeadDim, model.Dtype, model.Device);
    }

    public bool HasAdapter(string? adapterId) => adapterId is null || (_adapters?.Contains(adapterId) ?? false);

    /// <summary>Tokens currently held by <paramref name="slot"/>.</summary>
    public int SlotLength(int slot) => _lengths[CheckSlot(slot)];

    public float[] Prefill(int slot, ReadOnlySpan<int> tokens, int startPosition, string? adapterId)
    {
        CheckSlot(slot);
        int t = tokens.Length;
        if (t == 0) throw new ArgumentException("prefill needs at least one token");
        if (startPosition < 0 || startPosition > _lengths[slot])
            throw new ArgumentOutOfRangeException(nameof(startPosition), $"slot {slot} holds {_lengths[slot]} tokens; prefill cannot start at {startPosition}");
        if (startPosition + t > MaxSequenceLength)
            throw new ArgumentException($"sequence of {startPosition + t} tokens exceeds the runner's maximum of {MaxSequenceLength}");
        CheckTokens(tokens);
        var adapters = CreateAdapterBatch([adapterId]);
        if (startPosition == 0) ClearSlot(slot);
        MarkWritten(slot, startPosition + t);

        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var ids = ToDevice(tokens.ToArray().Select(x => (long)x).ToArray()).view(1, t);                     // [1, T]
        var positions = torch.arange(startPosition, startPosition + t, dtype: ScalarType.Int64, device: _model.Device).view(1, t);
        var (cos, sin) = _model.Rotary.CosSin(positions, _model.Dtype);
        var state = new ForwardState
        {
            Cos = cos, Sin = sin,
            IsCausal = startPosition == 0 && t > 1,
            Mask = startPosition == 0 ? null : PrefillMask(startPosition, t),
            Cache = _cache.ForPrefill(slot, startPosition),
            Adapters = adapters,
        };
        var logits = _model.Forward(ids, state, lastTokenOnly: true);                                        // [1, 1, V]
        _lengths[slot] = startPosition + t;
        return HostRows(logits.reshape(1, -1), 1)[0];
    }

    /// <summary>
    /// Several prefill chunks in one forward: rows padded to the longest chunk (padding tokens write KV entries past the
    /// row's end, never attended and overwritten by its next tokens), each row attends to its own slot's keys up to its
    /// own position. Rows whose padding would run past the slot's end are prefilled on their own.
    /// </summary>
    public float[][] PrefillBatch(IReadOnlyList<PrefillRow> rows)
    {
        if (rows.Count == 0) return [];
        var seen = new HashSet<int>();
        foreach (var r in rows)
        {
            CheckSlot(r.Slot);
            if (!seen.Add(r.Slot)) throw new ArgumentException($"slot {r.Slot} appears twice in one prefill batch");
            if (r.Tokens.Length == 0) throw new ArgumentException("prefill needs at least one token");
            if (r.StartPosition < 0 || r.StartPosition > _lengths[r.Slot])
                throw new ArgumentOutOfRangeException(nameof(rows), $"slot {r.Slot} holds {_lengths[r.Slot]} tokens; prefill cannot start at {r.StartPosition}");
            if (r.StartPosition + r.Tokens.Length > MaxSequenceLength)
                throw new ArgumentException($"sequence of {r.StartPosition + r.Tokens.Length} tokens exceeds the runner's maximum of {MaxSequenceLength}");
            CheckTokens(r.Tokens);
        }
        int t = rows.Max(r => r.Tokens.Length);
        var batched = rows.Where(r => r.StartPosition + t <= MaxSequenceLength).ToList();
        if (batched.Count <= 1) return rows.Select(r => Prefill(r.Slot, r.Tokens, r.StartPosition, r.AdapterId)).ToArray();

        float[][] batchedLogits = PrefillPadded(batched, t);
        var result = new float[rows.Count][];
        for (int i = 0, j = 0; i < rows.Count; i++)
            result[i] = rows[i].StartPosition + t <= MaxSequenceLength ? batchedLogits[j++] : Prefill(rows[i].Slot, rows[i].Tokens, rows[i].StartPosition, rows[i].AdapterId);
        return result;
    }

    private float[][] PrefillPadded(IReadOnlyList<PrefillRow> rows, int t)
    {
        var adapters = CreateAdapterBatch(rows.Select(r => r.AdapterId).ToList());
        int b = rows.Count;
        int length = rows.Max(r => r.StartPosition) + t;                                                   // keys read per row
        foreach (var r in rows)
        {
            if (r.StartPosition == 0) ClearSlot(r.Slot);
            MarkWritten(r.Slot, r.StartPosition + t);                                                       // padding included
        }
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var ids = new long[b * t];
        var positions = new long[b * t];
        for (int i = 0; i < b; i++)
            for (int j = 0; j < t; j++)
            {
                ids[i * t + j] = j < rows[i].Tokens.Length ? rows[i].Tokens[j] : 0;                         // padding: any valid id
                positions[i * t + j] = rows[i].StartPosition + j;
            }
        var idsT = ToDevice(ids).view(b, t);                                                                // [B, T]
        var positionsT = ToDevice(positions).view(b, t);                                                    // [B, T]
        var slots = ToDevice(rows.Select(r => (long)r.Slot).ToArray()).view(b, 1);                         // [B, 1]
        var lastIndex = ToDevice(rows.Select(r => (long)r.Tokens.Length - 1).ToArray());                   // [B]
        var (cos, sin) = _model.Rotary.CosSin(positionsT, _model.Dtype);
        var keys = torch.arange(length, dtype: ScalarType.Int64, device: _model.Device);                    // [L]
        var mask = keys.view(1, 1, length).le(positionsT.unsqueeze(-1)).unsqueeze(1);                        // [B, 1, T, L]: key ≤ query position
        var state = new ForwardState
        {
            Cos = cos, Sin = sin,
            Mask = mask,
            Cache = _cache.ForBatchPrefill(slots, positionsT, length),
            Adapters = adapters,
        };
        var logits = _model.Forward(idsT, state, outputPositions: lastIndex).reshape(b, VocabSize);           // [B, V]
        var host = HostRows(logits, b);
        foreach (var r in rows) _lengths[r.Slot] = r.StartPosition + r.Tokens.Length;
        return host;
    }

    public float[][] Decode(IReadOnlyList<DecodeRow> rows)
    {
        if (rows.Count == 0) return [];
        var seen = new HashSet<int>();
        foreach (var r in rows)
        {
            CheckSlot(r.Slot);
            if (!seen.Add(r.Slot)) throw new ArgumentException($"slot {r.Slot} appears twice in one decode step");
            if (r.Position < 0 || r.Position > _lengths[r.Slot])
                throw new ArgumentOutOfRangeException(nameof(rows), $"slot {r.Slot} holds {_lengths[r.Slot]} tokens; cannot decode at position {r.Position}");
            if (r.Position >= MaxSequenceLength)
                throw new ArgumentException($"slot {r.Slot}: position {r.Position} is beyond the runner's maximum of {MaxSequenceLength}");
            if ((uint)r.Token >= (uint)VocabSize) throw new ArgumentOutOfRangeException(nameof(rows), $"token id {r.Token} is outside the vocabulary (0..{VocabSize - 1})");
        }
        var adapters = CreateAdapterBatch(rows.Select(r => r.AdapterId).ToList());
        foreach (var r in rows) MarkWritten(r.Slot, r.Position + 1);

        int b = rows.Count;
        int length = rows.Max(r => r.Position) + 1;
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var ids = ToDevice(rows.Select(r => (long)r.Token).ToArray()).view(b, 1);           // [B, 1]
        var positions = ToDevice(rows.Select(r => (long)r.Position).ToArray());             // [B]
        var slots = ToDevice(rows.Select(r => (long)r.Slot).ToArray());                     // [B]
        var (cos, sin) = _model.Rotary.CosSin(positions.view(b, 1), _model.Dtype);
        var state = new ForwardState
        {
            Cos = cos, Sin = sin,
            AttentionBias = DecodeBias(rows, length),
            Cache = _cache.ForDecode(slots, positions, length, ConsecutiveFirstSlot(rows), rows.Select(r => new CpuDecode.RowPlace(r.Slot, r.Position)).ToArray()),
            Adapters = adapters,
        };
        var logits = _model.Forward(ids, state).reshape(b, VocabSize);       // [B, V]
        foreach (var r in rows) _lengths[r.Slot] = r.Position + 1;
        return HostRows(logits, b);
    }

    /// <summary>
    /// [B, V] logits as B float arrays on the host, copied straight from the tensor's memory
    /// (TensorAccessor.ToArray walks element by element: ~100 ms for 64 × 128k logits, this ~15 ms).
    /// </summary>
    private static float[][] HostRows(Tensor logits, int b)
    {
        var host = logits.to_type(ScalarType.Float32).cpu().contiguous();   // freed by the caller's dispose scope
        var all = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(host.bytes);
        int v = all.Length / b;
        var rows = new float[b][];
        for (int i = 0; i < b; i++) rows[i] = all.Slice(i * v, v).ToArray();
        return rows;
    }

    /// <summary>Ends the slot's sequence and zeroes its KV entries (see <see cref="KvCache.Clear"/>): whatever that sequence
    /// computed, even inf or NaN, cannot reach the rows that use the slot later.</summary>
    public void FreeSlot(int slot)
    {
        _lengths[CheckSlot(slot)] = 0;
        ClearSlot(slot);
    }

    /// <summary>
    /// Slot <paramref name="target"/> takes the first <paramref name="length"/> KV positions of <paramref name="source"/>
    /// (which must hold them); whatever the target held before is cleared first.
    /// </summary>
    public bool CopySlotPrefix(int source, int target, int length)
    {
        CheckSlot(source);
        CheckSlot(target);
        if (source == target) throw new ArgumentException("a slot cannot copy its own prefix");
        if (length < 1 || length > _lengths[source])
            throw new ArgumentOutOfRangeException(nameof(length), $"slot {source} holds {_lengths[source]} tokens; cannot copy {length}");
        ClearSlot(target);
        MarkWritten(target, length);
        _cache.CopyPrefix(source, target, length);
        _lengths[target] = length;
        return true;
    }

    /// <summary>Zeroes what earlier sequences left in the slot (nothing to do when it is already clean).</summary>
    private void ClearSlot(int slot)
    {
        if (_written[slot] == 0) return;
        _cache.Clear(slot, _written[slot]);
        _written[slot] = 0;
    }

    private void MarkWritten(int slot, int end) => _written[slot] = Math.Max(_written[slot], Math.Min(end, MaxSequenceLength));

    /// <summary>[1, 1, T, start+T]: query i (at start+i) may attend to keys 0..start+i.</summary>
    private Tensor PrefillMask(int start, int t)
    {
        var keys = torch.arange(start + t, dtype: ScalarType.Int64, device: _model.Device);              // [L]
        var queries = torch.arange(start, start + t, dtype: ScalarType.Int64, device: _model.Device);    // [T]
        return keys.unsqueeze(0).le(queries.unsqueeze(1)).view(1, 1, t, start + t);
    }

    /// <summary>[B, 1, 1, L] additive bias in the compute dtype: 0 where row b may attend (keys 0..position b), -inf after; built on the host, one copy.</summary>
    private Tensor DecodeBias(IReadOnlyList<DecodeRow> rows, int length)
    {
        var bias = new float[rows.Count * length];
        for (int i = 0; i < rows.Count; i++)
            bias.AsSpan(i * length + rows[i].Position + 1, length - rows[i].Position - 1).Fill(float.NegativeInfinity);
        var t = torch.tensor(bias).view(rows.Count, 1, 1, length);
        if (_model.Dtype != ScalarType.Float32) t = t.to_type(_model.Dtype);
        return _model.Device.type == DeviceType.CPU ? t : t.to(_model.Device);
    }

    /// <summary>When rows use slots f, f+1, f+2, ... the cache can be read as a view.</summary>
    private static int? ConsecutiveFirstSlot(IReadOnlyList<DecodeRow> rows)
    {
        for (int i = 1; i < rows.Count; i++)
            if (rows[i].Slot != rows[0].Slot + i) return null;
        return rows[0].Slot;
    }

    private IAdapterBatch? CreateAdapterBatch(IReadOnlyList<string?> rowAdapterIds)
    {
        if (rowAdapterIds.All(id => id is null)) return null;
        if (_adapters is null) throw new InvalidOperationException($"adapter '{rowAdapterIds.First(id => id is not null)}' requested but this runner has no adapter source");
        foreach (var id in rowAdapterIds)
            if (id is not null && !_adapters.Contains(id)) throw new ArgumentException($"adapter '{id}' is not loaded");
        return _adapters.CreateBatch(rowAdapterIds);
    }

    private Tensor ToDevice(long[] values) => torch.tensor(values, dtype: ScalarType.Int64).to(_model.Device);

    private void CheckTokens(ReadOnlySpan<int> tokens)
    {
        foreach (int id in tokens)
            if ((uint)id >= (uint)VocabSize) throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {id} is outside the vocabulary (0..{VocabSize - 1})");
    }

    private int CheckSlot(int slot) =>
        slot >= 0 && slot < SlotCount ? slot : throw new ArgumentOutOfRangeException(nameof(slot), $"slot {slot} of {SlotCount}");

    public void Dispose() => _cache.Dispose();
}
