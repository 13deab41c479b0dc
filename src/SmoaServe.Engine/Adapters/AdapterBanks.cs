using SmoaServe.Engine.Adapters.Smoa;
using System.Runtime.Intrinsics;
using SmoaServe.Engine.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Adapters;

/// <summary>
/// The frozen anchors of one SMoA layout of one (layer, module): M_k = W[R_k, C_k], copied once into a contiguous,
/// zero-padded block stack and shared by every adapter that uses this layout (every adapter with this K, normally).
/// </summary>
public sealed class SmoaAnchors : IDisposable
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
    /// <summary>
    /// Float32 CPU models: M_k row by row ([K, Rmax, Cmax], contiguous) streamed by one <see cref="CpuGemv"/> per block
    /// for decode steps (see <see cref="SmoaBank.TryAddDecodeDeltaOnCpu"/>), with the column and row indices on the host.
    /// Null elsewhere. A second copy of the anchors: the bmm form wants Mᵀ, the kernel M.
    /// </summary>
    internal CpuGemv[]? BlockKernels { get; }
    internal int[]? ColIndexHost { get; }
    internal int[]? RowIndexHost { get; }
    private readonly Tensor? _anchorsRowMajor;
    private readonly Tensor[]? _blockViews;

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
        if (device.type == DeviceType.CPU && weight.dtype == ScalarType.Float32)
        {
            _anchorsRowMajor = stack(blocks).contiguous().DetachFromDisposeScope();           // [K, Rmax, Cmax]
            _blockViews = Enumerable.Range(0, layout.K).Select(k => _anchorsRowMajor[k].DetachFromDisposeScope()).ToArray();  // M_k [Rmax, Cmax]
            BlockKernels = _blockViews.Select(m => new CpuGemv(m, null, WeightStorage.Float32)).ToArray();
            ColIndexHost = colIndex.Select(c => (int)c).ToArray();
            RowIndexHost = rowIndex.Select(r => (int)r).ToArray();
        }
    }

    public long Bytes => (AnchorsT.NumberOfElements + (_anchorsRowMajor?.NumberOfElements ?? 0)) * AnchorsT.ElementSize;

    public void Dispose()
    {
        AnchorsT.Dispose(); ColIndex.Dispose(); RowIndex.Dispose();
        if (BlockKernels is not null) foreach (var kernel in BlockKernels) kernel.Dispose();
        if (_blockViews is not null) foreach (var view in _blockViews) view.Dispose();
        _anchorsRowMajor?.Dispose();
    }
}

/// <summary>Factors of a batch's rows gathered from a bank (what the bank's delta multiplies with).</summary>
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

    /// <summary>The factors of slots [n], laid out for the bank's delta.</summary>
    public abstract GatheredFactors Gather(Tensor slots);

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

    /// <summary>y += ΔW x for n rows whose factors were gathered: x [n, T, in], y [n, T, out] (in place; returns y).</summary>
    public Tensor AddDelta(Tensor x, Tensor y, GatheredFactors f)
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

    /// <summary>
    /// A decode step's y += ΔW x on a float32 CPU model, every row of the batch using this bank (the same arithmetic as
    /// <see cref="SmoaMath.AddBatchedDelta"/> without its ~15 tensor operations): per block k,
    ///   U = A_k ⊙ x[C_k]          [n·rpad, Cmax]   (each row's rpad rank vectors)
    ///   Z = U M_kᵀ                [n·rpad, Rmax]   one pass of the CPU kernel over the shared anchor M_k
    ///   y[b, R_k] += Σ_j Bt_k[b, j] ⊙ Z[b·rpad + j]
    /// Returns false (nothing done) when the case is not that one: the caller takes the tensor path.
    /// </summary>
    /// <param name="x">[n, 1, in]</param>
    /// <param name="groupOutput">[n, 1, Σout] contiguous: the group's GEMM output, updated in place</param>
    /// <param name="columnOffset">the part's first column in <paramref name="groupOutput"/></param>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    public unsafe bool TryAddDecodeDeltaOnCpu(Tensor x, Tensor groupOutput, long columnOffset, GatheredFactors f)
    {
        if (Anchors.BlockKernels is not { } kernels || x.dim() != 3 || x.size(1) != 1 || !CpuDecode.Applies(x, x.size(2))
            || !groupOutput.is_contiguous() || groupOutput.size(0) != x.size(0) || groupOutput.size(1) != 1
            || !f.A.is_contiguous() || !f.Bt.is_contiguous() || f.A.dtype != ScalarType.Float32 || f.Bt.dtype != ScalarType.Float32)
            return false;
        int n = (int)x.size(0), k = Anchors.Layout.K, cmax = Anchors.ColsMax, rmax = Anchors.RowsMax, rpad = RankPad;
        long inFeatures = x.size(2), width = groupOutput.size(2);
        if ((long)n * rpad > CpuGemv.MaxRows || f.A.NumberOfElements != (long)k * n * rpad * cmax || f.Bt.NumberOfElements != (long)k * n * rpad * rmax
            || inFeatures != Anchors.Layout.InFeatures || columnOffset < 0 || columnOffset + Anchors.Layout.OutFeatures > width) return false;
        var input = x.is_contiguous() ? x : x.contiguous();
        float* xp = CpuDecode.Pointer(input), yp = CpuDecode.Pointer(groupOutput), ap = CpuDecode.Pointer(f.A), btp = CpuDecode.Pointer(f.Bt);
        int[] cols = Anchors.ColIndexHost!, rows = Anchors.RowIndexHost!;
        using var scope = torch.NewDisposeScope();
        var u = torch.empty([k, (long)n * rpad, cmax], ScalarType.Float32);                  // U_k for every block
        float* up = CpuDecode.Pointer(u);
        float* xg = stackalloc float[cmax];
        float* o = stackalloc float[rmax];
        for (int block = 0; block < k; block++)
            for (int b = 0; b < n; b++)
            {
                float* xRow = xp + b * inFeatures;
                for (int c = 0; c < cmax; c++) xg[c] = xRow[cols[block * cmax + c]];             // x[C_k]
                for (int j = 0; j < rpad; j++)
                    Multiply(ap + (((long)block * n + b) * rpad + j) * cmax, xg, up + (((long)block * n + b) * rpad + j) * cmax, cmax);
            }
        var z = CpuGemv.ForwardEach(kernels, Enumerable.Range(0, k).Select(block => u[block]).ToArray());   // Z_k [n·rpad, Rmax]
        for (int block = 0; block < k; block++)
        {
            float* zp = CpuDecode.Pointer(z[block]);
            for (int b = 0; b < n; b++)
            {
                new Span<float>(o, rmax).Clear();
                for (int j = 0; j < rpad; j++)
                    MultiplyAdd(btp + (((long)block * n + b) * rpad + j) * rmax, zp + ((long)b * rpad + j) * rmax, o, rmax);
                float* yRow = yp + b * width + columnOffset;
                for (int r = 0; r < rmax; r++) yRow[rows[block * rmax + r]] += o[r];
            }
        }
        if (!ReferenceEquals(input, x)) input.Dispose();
        return true;
    }

    /// <summary>c = a ⊙ b.</summary>
    private static unsafe void Multiply(float* a, float* b, float* c, int length)
    {
        int i = 0;
        for (; i + 8 <= length; i += 8) Vector256.Store(Vector256.Load(a + i) * Vector256.Load(b + i), c + i);
        for (; i < length; i++) c[i] = a[i] * b[i];
    }

    /// <summary>c += a ⊙ b.</summary>
    private static unsafe void MultiplyAdd(float* a, float* b, float* c, int length)
    {
        int i = 0;
        for (; i + 8 <= length; i += 8) Vector256.Store(Vector256.Load(c + i) + Vector256.Load(a + i) * Vector256.Load(b + i), c + i);
        for (; i < length; i++) c[i] += a[i] * b[i];
    }

    public override void Dispose() { _a?.Dispose(); _bt?.Dispose(); }
}

/// <summary>How a <see cref="GroupBank"/>'s folded factors A', B' make ΔW.</summary>
internal enum GroupForm
{
    /// <summary>LoRA: ΔW = B' A'.</summary>
    LowRank,
    /// <summary>SMoA / HiRA in the folded form: ΔW = (B' A') ⊙ W (see <see cref="SmoaMath.FoldFactors"/>).</summary>
    Hadamard,
}

/// <summary>
/// Factors of every loaded adapter with one rank signature on one (layer, projection group), for all of the group's parts
/// at once: A' [cap, Σr, in] and scale·B'ᵀ [cap, Σr, Σout], part p's ranks in rows [ρ_p, ρ_p + r_p) and its outputs in
/// columns [o_p, o_p + out_p), zero elsewhere. So a batch applies every row's update to q, k and v (or gate and up) with
/// a handful of operations on the group's fused GEMM output, whatever the number of parts or adapters.
/// </summary>
/// <param name="partRanks">rank of each part (0: the adapters of this bank do not target it)</param>
/// <param name="partOuts">output features of each part (the group's output is their concatenation)</param>
/// <param name="groupWeight">W of the group [Σout, in] (Hadamard form; owned by the model)</param>
/// <param name="denseMaxElements">prefill (Hadamard form): rows whose transient ΔWᵀ are formed at once hold at most this
/// many elements together (at least one row)</param>
internal sealed class GroupBank(GroupForm form, int[] partRanks, int inFeatures, int[] partOuts, Tensor? groupWeight,
    long denseMaxElements, ScalarType dtype, Device device) : FactorBank
{
    private Tensor? _a, _bt;
    private readonly int _sumRanks = partRanks.Sum();
    private readonly int _sumOuts = partOuts.Sum();

    public GroupForm Form { get; } = form;

    protected override void Grow(int oldCapacity, int newCapacity)
    {
        _a = GrowStack(_a, 0, oldCapacity, [newCapacity, _sumRanks, inFeatures], dtype, device);
        _bt = GrowStack(_bt, 0, oldCapacity, [newCapacity, _sumRanks, _sumOuts], dtype, device);
    }

    /// <summary>Writes one adapter: per targeted part, A' [r_p, in] and scale·B'ᵀ [r_p, out_p] (other parts stay zero).</summary>
    public void Write(int slot, IReadOnlyList<(int Part, Tensor A, Tensor Bt)> parts)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var aSlot = _a!.select(0, slot);    // [Σr, in]
        var btSlot = _bt!.select(0, slot);  // [Σr, Σout]
        aSlot.zero_(); btSlot.zero_();
        foreach (var (part, a, bt) in parts)
        {
            long rankOffset = partRanks.Take(part).Sum(), outOffset = partOuts.Take(part).Sum();
            if (a.shape[0] != partRanks[part] || a.shape[1] != inFeatures || bt.shape[0] != partRanks[part] || bt.shape[1] != partOuts[part])
                throw new ArgumentException($"part {part}: factors [{string.Join(", ", a.shape)}], [{string.Join(", ", bt.shape)}] do not fit rank {partRanks[part]}, {inFeatures} → {partOuts[part]}");
            aSlot.narrow(0, rankOffset, partRanks[part]).copy_(a);
            btSlot.narrow(0, rankOffset, partRanks[part]).narrow(1, outOffset, partOuts[part]).copy_(bt);
        }
    }

    /// <summary>A' [n, Σr, in], scale·B'ᵀ [n, Σr, Σout] of slots [n].</summary>
    public override GatheredFactors Gather(Tensor slots) => new(_a!.index_select(0, slots), _bt!.index_select(0, slots));

    /// <summary>ΔW x of the whole group for n rows: x [n, T, in] → [n, T, Σout].</summary>
    public Tensor Delta(Tensor x, GatheredFactors f)
    {
        if (Form == GroupForm.LowRank)
            return bmm(bmm(x, f.A.transpose(1, 2)), f.Bt);                              // B' (A' x): [n, T, Σr] → [n, T, Σout]
        long n = x.shape[0], t = x.shape[1];
        if (t == 1) return SmoaMath.FoldedDecodeDelta(x, f.A, f.Bt, groupWeight!);
        long rowsPerChunk = Math.Max(1, denseMaxElements / ((long)inFeatures * _sumOuts));
        var chunks = new List<Tensor>();
        for (long start = 0; start < n; start += rowsPerChunk)
        {
            long len = Math.Min(rowsPerChunk, n - start);
            chunks.Add(SmoaMath.FoldedDenseDelta(x.narrow(0, start, len), f.A.narrow(0, start, len), f.Bt.narrow(0, start, len), groupWeight!));
        }
        return chunks.Count == 1 ? chunks[0] : cat(chunks.ToArray(), 0);
    }

    public override long SlotBytes => (long)_sumRanks * (inFeatures + _sumOuts) * _a!.ElementSize;

    public override void Dispose() { _a?.Dispose(); _bt?.Dispose(); }
}
