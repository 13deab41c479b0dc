using SmoaServe.Engine.Adapters.Smoa;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Adapters;

/// <summary>
/// The frozen anchors of one SMoA layout of one (layer, module): M_k = W[R_k, C_k], copied once into a contiguous,
/// zero-padded block stack and shared by every adapter that uses this layout (every adapter with this K, normally).
/// </summary>
internal sealed class SmoaAnchors : IDisposable
{
    public SmoaLayout Layout { get; }
    public int RowsMax { get; }   // Rmax = max |R_k|
    public int ColsMax { get; }   // Cmax = max |C_k|
    /// <summary>M_kᵀ zero-padded, [K, Cmax, Rmax], contiguous, compute dtype (the right-hand side of the one bmm).</summary>
    public Tensor AnchorsT { get; }
    /// <summary>[K·Cmax] input column of padded position (k, c) (padding points at column 0; A is zero there).</summary>
    public Tensor ColIndex { get; }
    /// <summary>[K·Rmax] output row R_k[j] of padded position k·Rmax + j (padding points at row 0; it adds zeros).</summary>
    public Tensor RowIndex { get; }

    public SmoaAnchors(SmoaLayout layout, Tensor weight)
    {
        Layout = layout;
        RowsMax = layout.Rows.Max(r => r.Length);
        ColsMax = layout.Cols.Max(c => c.Length);
        var device = weight.device;
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var blocks = new Tensor[layout.K];
        var colIndex = new long[layout.K * ColsMax];
        var rowIndex = new long[layout.K * RowsMax];
        for (int k = 0; k < layout.K; k++)
        {
            var rows = tensor(layout.Rows[k], device: device);
            var cols = tensor(layout.Cols[k], device: device);
            var block = weight.index_select(0, rows).index_select(1, cols);                    // [|R_k|, |C_k|]
            blocks[k] = nn.functional.pad(block, [0, ColsMax - layout.Cols[k].Length, 0, RowsMax - layout.Rows[k].Length]);
            Array.Copy(layout.Cols[k], 0, colIndex, k * ColsMax, layout.Cols[k].Length);
            Array.Copy(layout.Rows[k], 0, rowIndex, k * RowsMax, layout.Rows[k].Length);
        }
        AnchorsT = stack(blocks).transpose(1, 2).contiguous().DetachFromDisposeScope();      // [K, Cmax, Rmax]
        ColIndex = tensor(colIndex, device: device).DetachFromDisposeScope();
        RowIndex = tensor(rowIndex, device: device).DetachFromDisposeScope();
    }

    public long Bytes => AnchorsT.NumberOfElements * AnchorsT.ElementSize;

    public void Dispose() { AnchorsT.Dispose(); ColIndex.Dispose(); RowIndex.Dispose(); }
}

/// <summary>Factors of a batch's rows gathered from a bank (what <see cref="FactorBank.AddDelta"/> multiplies with).</summary>
internal sealed record GatheredFactors(Tensor A, Tensor Bt)
{
    public long Bytes => (A.NumberOfElements + Bt.NumberOfElements) * A.ElementSize;
}

/// <summary>
/// Stacked factors of every loaded adapter with one shape signature on one (layer, module), one slot per adapter, so
/// a batch gathers its rows' factors with one index_select instead of per-adapter loops. Grows by doubling.
/// </summary>
internal abstract class FactorBank : IDisposable
{
    private readonly Stack<int> _free = new();
    private int _used;
    protected int Capacity { get; private set; }
    public int Occupied => _used - _free.Count;

    /// <summary>Takes a free slot, growing the stacks if needed. Model thread.</summary>
    public int AllocateSlot()
    {
        if (_free.TryPop(out int slot)) return slot;
        if (_used == Capacity)
        {
            int newCapacity = Math.Max(4, Capacity * 2);
            Grow(Capacity, newCapacity);
            Capacity = newCapacity;
        }
        return _used++;
    }

    /// <summary>Returns a slot. Touches no tensor (safe from any thread under the registry lock); the slot's values stay
    /// until a later load (model thread) overwrites them.</summary>
    public void ReleaseSlot(int slot) => _free.Push(slot);

    protected abstract void Grow(int oldCapacity, int newCapacity);

    protected static Tensor GrowStack(Tensor? old, long dim, int oldCapacity, long[] newShape, ScalarType dtype, Device device)
    {
        using var _ = no_grad();
        var grown = zeros(newShape, dtype: dtype, device: device).DetachFromDisposeScope();
        if (old is not null)
        {
            grown.narrow(dim, 0, oldCapacity).copy_(old);
            old.Dispose();
        }
        return grown;
    }

    public abstract long SlotBytes { get; }

    /// <summary>The factors of slots [n], laid out for <see cref="AddDelta"/>.</summary>
    public abstract GatheredFactors Gather(Tensor slots);

    /// <summary>y + ΔW x for n rows whose factors were gathered: x [n, T, in], y [n, T, out] → [n, T, out].</summary>
    public abstract Tensor AddDelta(Tensor x, Tensor y, GatheredFactors f);

    public abstract void Dispose();
}

/// <summary>SMoA factors for one anchor layout and one padded rank: A [K, cap, rpad, Cmax], scale·Bᵀ [K, cap, rpad, Rmax].</summary>
internal sealed class SmoaBank(SmoaAnchors anchors, int rankPad, ScalarType dtype, Device device) : FactorBank
{
    public SmoaAnchors Anchors { get; } = anchors;
    public int RankPad { get; } = rankPad;
    private Tensor? _a, _bt;

    protected override void Grow(int oldCapacity, int newCapacity)
    {
        int k = Anchors.Layout.K;
        _a = GrowStack(_a, 1, oldCapacity, [k, newCapacity, RankPad, Anchors.ColsMax], dtype, device);
        _bt = GrowStack(_bt, 1, oldCapacity, [k, newCapacity, RankPad, Anchors.RowsMax], dtype, device);
    }

    /// <summary>Writes one adapter's blocks into slot: A_k [r_k, |C_k|], B_k [|R_k|, r_k] (null where r_k = 0).</summary>
    public void Write(int slot, IReadOnlyList<Tensor?> a, IReadOnlyList<Tensor?> b, double scale)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        for (int k = 0; k < Anchors.Layout.K; k++)
        {
            var aSlot = _a!.select(0, k).select(0, slot);     // [rpad, Cmax]
            var btSlot = _bt!.select(0, k).select(0, slot);   // [rpad, Rmax]
            aSlot.zero_(); btSlot.zero_();
            if (a[k] is null || b[k] is null) continue;
            long rk = a[k]!.shape[0];
            aSlot.narrow(0, 0, rk).narrow(1, 0, a[k]!.shape[1]).copy_(a[k]!);
            btSlot.narrow(0, 0, rk).narrow(1, 0, b[k]!.shape[0]).copy_(b[k]!.t() * scale);
        }
    }

    /// <summary>A [K, n, rpad, Cmax], scale·Bᵀ [K, n, rpad, Rmax] of slots [n].</summary>
    public override GatheredFactors Gather(Tensor slots) => new(_a!.index_select(1, slots), _bt!.index_select(1, slots));

    /// <summary>Rows of at least this many tokens may use the blockwise (prefill) form; shorter ones the shared-anchor GEMM.</summary>
    public const int BlockwiseMinTokens = 4;
    /// <summary>Transient elements the blockwise form may always build ([K, n, Cmax, Rmax]); beyond this it is used only
    /// when its transient is still smaller than the shared-anchor form's ([K, n·T·rpad, Cmax + Rmax]).</summary>
    public const long BlockwiseMaxElements = 1L << 26;

    public override Tensor AddDelta(Tensor x, Tensor y, GatheredFactors f)
    {
        long n = x.shape[0], t = x.shape[1], k = Anchors.Layout.K;
        long blockwiseElements = n * Anchors.AnchorsT.NumberOfElements;
        long sharedElements = k * n * t * RankPad * (Anchors.ColsMax + Anchors.RowsMax);
        bool blockwise = t >= BlockwiseMinTokens && t > RankPad
            && (blockwiseElements <= BlockwiseMaxElements || blockwiseElements < sharedElements);
        return blockwise
            ? SmoaMath.AddBlockwiseDelta(x, y, Anchors.AnchorsT, f.A, f.Bt, Anchors.ColIndex, Anchors.RowIndex)
            : SmoaMath.AddBatchedDelta(x, y, Anchors.AnchorsT, f.A, f.Bt, Anchors.ColIndex, Anchors.RowIndex);
    }

    public override long SlotBytes => (_a!.NumberOfElements + _bt!.NumberOfElements) / Capacity * _a.ElementSize;

    public override void Dispose() { _a?.Dispose(); _bt?.Dispose(); }
}

/// <summary>LoRA factors of one (layer, module) and rank r: A [cap, r, in], scale·Bᵀ [cap, r, out].</summary>
internal sealed class LoraBank(int rank, int inFeatures, int outFeatures, ScalarType dtype, Device device) : FactorBank
{
    public int Rank { get; } = rank;
    private Tensor? _a, _bt;

    protected override void Grow(int oldCapacity, int newCapacity)
    {
        _a = GrowStack(_a, 0, oldCapacity, [newCapacity, Rank, inFeatures], dtype, device);
        _bt = GrowStack(_bt, 0, oldCapacity, [newCapacity, Rank, outFeatures], dtype, device);
    }

    /// <param name="a">A [r, in]</param>
    /// <param name="b">B [out, r]</param>
    public void Write(int slot, Tensor a, Tensor b, double scale)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        _a!.select(0, slot).copy_(a);
        _bt!.select(0, slot).copy_(b.t() * scale);
    }

    /// <summary>Aᵀ [n, in, r] (a transposed view) and scale·Bᵀ [n, r, out] of slots [n].</summary>
    public override GatheredFactors Gather(Tensor slots) => new(_a!.index_select(0, slots), _bt!.index_select(0, slots));

    /// <summary>y + scale·B (A x) per row (two gathered bmm's).</summary>
    public override Tensor AddDelta(Tensor x, Tensor y, GatheredFactors f)
    {
        var h = bmm(x, f.A.transpose(1, 2));    // [n, T, r]
        return y + bmm(h, f.Bt);                // [n, T, out]
    }

    public override long SlotBytes => (_a!.NumberOfElements + _bt!.NumberOfElements) / Capacity * _a.ElementSize;

    public override void Dispose() { _a?.Dispose(); _bt?.Dispose(); }
}
