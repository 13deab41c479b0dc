using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Model;

/// <summary>How one forward's attention layers store new keys/values and get the keys/values to attend over.</summary>
public interface IKvAccess
{
    /// <param name="k">new keys [B, NKV, T, D] (after RoPE)</param>
    /// <param name="v">new values [B, NKV, T, D]</param>
    /// <returns>all keys/values the new tokens attend over, [B, NKV, L, D]</returns>
    (Tensor K, Tensor V) Append(int layer, Tensor k, Tensor v);
}

/// <summary>
/// Preallocated KV cache: per layer K and V of [slots, NKV, maxSeq, D] in the compute dtype. A slot holds one sequence;
/// positions are absolute (the slot's tokens 0..len-1 sit at [slot, :, 0..len-1]).
/// </summary>
public sealed class KvCache : IDisposable
{
    private readonly Tensor[] _k, _v;
    private readonly CpuDecode.CacheLayer[]? _cpuLayers;   // float32 CPU caches: the layers' memory for CpuDecode.Attend

    public int Slots { get; }
    public int MaxSequenceLength { get; }

    public KvCache(int layers, int slots, int kvHeads, int maxSequenceLength, int headDim, ScalarType dtype, Device device)
    {
        Slots = slots;
        MaxSequenceLength = maxSequenceLength;
        _k = new Tensor[layers];
        _v = new Tensor[layers];
        for (int l = 0; l < layers; l++)
        {
            _k[l] = torch.zeros([slots, kvHeads, maxSequenceLength, headDim], dtype, device).DetachFromDisposeScope();
            _v[l] = torch.zeros([slots, kvHeads, maxSequenceLength, headDim], dtype, device).DetachFromDisposeScope();
        }
        if (dtype == ScalarType.Float32 && device.type == DeviceType.CPU)
            _cpuLayers = Enumerable.Range(0, layers).Select(l => CpuDecode.CacheLayer.Of(_k[l], _v[l])).ToArray();
    }

    /// <summary>
    /// Zeroes positions 0..length-1 of <paramref name="slot"/> in every layer. Attention reads every row's keys up to the
    /// batch's longest position and masks the rest, but a masked entry still enters the arithmetic (q·k before the mask
    /// is added, 0 × v after the softmax): an entry left by an earlier sequence that overflowed (inf or NaN) would turn
    /// the new occupant's attention into NaN. Cleared when a sequence leaves its slot, so a slot holds only zeros or the
    /// entries of its current sequence.
    /// </summary>
    public void Clear(int slot, int length)
    {
        if (slot < 0 || slot >= Slots) throw new ArgumentOutOfRangeException(nameof(slot), $"slot {slot} of {Slots}");
        length = Math.Min(length, MaxSequenceLength);
        if (length <= 0) return;
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        foreach (var store in _k.Concat(_v)) store.narrow(0, slot, 1).narrow(2, 0, length).zero_();
    }

    /// <summary>Copies positions 0..length-1 of slot <paramref name="source"/> into slot <paramref name="target"/> in every layer.</summary>
    public void CopyPrefix(int source, int target, int length)
    {
        if (source < 0 || source >= Slots) throw new ArgumentOutOfRangeException(nameof(source), $"slot {source} of {Slots}");
        if (target < 0 || target >= Slots) throw new ArgumentOutOfRangeException(nameof(target), $"slot {target} of {Slots}");
        if (length <= 0 || length > MaxSequenceLength) throw new ArgumentOutOfRangeException(nameof(length), $"length {length} of {MaxSequenceLength}");
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        foreach (var store in _k.Concat(_v))
            store.narrow(0, target, 1).narrow(2, 0, length).copy_(store.narrow(0, source, 1).narrow(2, 0, length));
    }

    /// <summary>Bytes held by the cache.</summary>
    public long Bytes => _k.Sum(t => t.NumberOfElements * t.ElementSize) * 2;

    /// <summary>Prefill of one sequence (batch 1) in <paramref name="slot"/>: tokens at start..start+T-1.</summary>
    public IKvAccess ForPrefill(int slot, int start) => new PrefillAccess(this, slot, start);

    /// <summary>Decode of B rows, row b writing one token at positions[b] of slots[b]; reads keys 0..length-1.</summary>
    /// <param name="slots">int64 [B] on the cache's device</param>
    /// <param name="positions">int64 [B] on the cache's device</param>
    /// <param name="firstSlot">when the rows' slots are firstSlot, firstSlot+1, ... the read is a view, not a gather</param>
    /// <param name="places">the same slots and positions on the host: a float32 CPU cache then attends through <see cref="CpuDecode.Attend"/></param>
    public IKvAccess ForDecode(Tensor slots, Tensor positions, int length, int? firstSlot, IReadOnlyList<CpuDecode.RowPlace>? places = null) =>
        new DecodeAccess(this, slots, positions, length, firstSlot, places);

    /// <summary>Prefill of B rows padded to T tokens: row b writes positions[b, :] of slots[b] and reads keys 0..length-1.</summary>
    /// <param name="slots">int64 [B, 1] on the cache's device</param>
    /// <param name="positions">int64 [B, T] on the cache's device (every one below the slot length)</param>
    public IKvAccess ForBatchPrefill(Tensor slots, Tensor positions, int length) => new BatchPrefillAccess(this, slots, positions, length);

    private sealed class BatchPrefillAccess(KvCache cache, Tensor slots, Tensor positions, int length) : IKvAccess
    {
        public (Tensor K, Tensor V) Append(int layer, Tensor k, Tensor v)
        {
            return (Write(cache._k[layer], k), Write(cache._v[layer], v));

            Tensor Write(Tensor store, Tensor fresh)
            {
                // store[slots[b], :, positions[b, t], :] = fresh[b, :, t, :]
                store.index_put_(fresh.transpose(1, 2), [TensorIndex.Tensor(slots), TensorIndex.Colon, TensorIndex.Tensor(positions)]);
                return store.narrow(2, 0, length).index_select(0, slots.view(-1));   // [B, NKV, L, D]
            }
        }
    }

    private sealed class PrefillAccess(KvCache cache, int slot, int start) : IKvAccess
    {
        public (Tensor K, Tensor V) Append(int layer, Tensor k, Tensor v)
        {
            long t = k.shape[2];
            return (Write(cache._k[layer], k), Write(cache._v[layer], v));

            Tensor Write(Tensor store, Tensor fresh)
            {
                var slotView = store.narrow(0, slot, 1);                // [1, NKV, maxSeq, D]
                slotView.narrow(2, start, t).copy_(fresh);
                return slotView.narrow(2, 0, start + t);               // [1, NKV, start+T, D]
            }
        }
    }

    internal sealed class DecodeAccess(KvCache cache, Tensor slots, Tensor positions, int length, int? firstSlot, IReadOnlyList<CpuDecode.RowPlace>? places) : IKvAccess
    {
        /// <summary>
        /// RoPE, the cache write and the attention of one layer in one pass over the cache's memory
        /// (<see cref="CpuDecode.Attend"/>), or null when the rows' places were not given or the cache is not float32 on the CPU.
        /// </summary>
        /// <returns>[B, 1, NH·D]</returns>
        public Tensor? TryAttendOnCpu(int layer, Tensor qkv, Tensor cos, Tensor sin, int numHeads)
        {
            if (places is null || cache._cpuLayers is not { } layers || !CpuDecode.Applies(qkv, qkv.size(-1)) || cos.dtype != ScalarType.Float32) return null;
            return CpuDecode.Attend(qkv, cos, sin, layers[layer], places, numHeads);
        }

        public (Tensor K, Tensor V) Append(int layer, Tensor k, Tensor v)
        {
            return (Write(cache._k[layer], k), Write(cache._v[layer], v));

            Tensor Write(Tensor store, Tensor fresh)
            {
                // store[slots[b], :, positions[b], :] = fresh[b, :, 0, :]
                store.index_put_(fresh.squeeze(2), [TensorIndex.Tensor(slots), TensorIndex.Colon, TensorIndex.Tensor(positions)]);
                var prefix = store.narrow(2, 0, length);                            // [S, NKV, L, D]
                return firstSlot is int first ? prefix.narrow(0, first, slots.shape[0]) : prefix.index_select(0, slots);
            }
        }
    }

    public void Dispose()
    {
        foreach (var t in _k) t.Dispose();
        foreach (var t in _v) t.Dispose();
    }
}
