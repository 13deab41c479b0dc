using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Adapters.Smoa;

/// <summary>
/// The SMoA math of docs/smoa-spec.md in one place:
///   layout  — <see cref="SpectralOrder"/> (steps 1-3, used by <see cref="SmoaLayout.Compute"/>), <see cref="SplitRanks"/> (step 5);
///   merge   — <see cref="DenseDelta"/>: ΔW[R_k, C_k] = scale · (B_k A_k) ⊙ W[R_k, C_k], zero elsewhere (step 6);
///   serving, anchored form (CPU) — <see cref="AddBatchedDelta"/>: ΔW x for a batch whose rows use different adapters,
///             via the shared-anchor identity ((B A) ⊙ M) x = Σ_j b_j ⊙ (M (a_j ⊙ x)) — one GEMM per block for all rows;
///   serving, folded form (GPU) — <see cref="FoldFactors"/>: SMoA is HiRA with block-sparse factors, ΔW = (B' A') ⊙ W
///             with A' = the A_k placed in columns C_k and B' = the B_k placed in rows R_k, so a decode step needs no
///             anchors, permutations or per-block work: <see cref="FoldedDecodeDelta"/> is one GEMM with the whole W.
/// </summary>
public static class SmoaMath
{
    /// <summary>float32 machine epsilon (torch.finfo(torch.float32).eps).</summary>
    public const float Float32Eps = 1.1920929e-07f;

    /// <summary>
    /// Indices sorted (stable, ascending) by energy-weighted mean spectral index:
    /// score_i = Σ_j j·V_ij²·s_j² / max(Σ_j V_ij²·s_j², eps), computed in float32 like the reference.
    /// </summary>
    /// <param name="vectors">U [m, q] (rows of W) or V = Vhᵀ [n, q] (columns of W), float32</param>
    /// <param name="s">singular values [q], descending</param>
    public static long[] SpectralOrder(Tensor vectors, Tensor s)
    {
        using var scope = NewDisposeScope();
        long q = vectors.shape[1];
        var spectralIds = arange(q, dtype: ScalarType.Float32, device: vectors.device);   // [q]
        var energy = vectors.pow(2) * s.pow(2).unsqueeze(0);                              // [size, q]
        var denom = energy.sum(1).clamp_min(Float32Eps);                                  // [size]
        var score = (energy * spectralIds.unsqueeze(0)).sum(1) / denom;                   // [size]
        var (_, order) = score.sort(dim: 0, descending: false, stable: true);             // [size]
        return order.cpu().data<long>().ToArray();
    }

    /// <summary>r_k = r div K, plus one for the first r mod K blocks (cpeft _split_rank).</summary>
    public static int[] SplitRanks(int r, int k) => SmoaLayout.SplitSizes(r, k);

    /// <summary>
    /// Dense ΔW [m, n] (float32) for merging and for reference checks; never used on the serving path.
    /// </summary>
    /// <param name="weight">W [m, n]</param>
    /// <param name="a">A_k [r_k, |C_k|] per block (null where r_k = 0)</param>
    /// <param name="b">B_k [|R_k|, r_k] per block (null where r_k = 0)</param>
    /// <param name="scale">lora_alpha / r</param>
    public static Tensor DenseDelta(Tensor weight, SmoaLayout layout, IReadOnlyList<Tensor?> a, IReadOnlyList<Tensor?> b, double scale)
    {
        using var scope = NewDisposeScope();
        var w = weight.to(ScalarType.Float32);
        var delta = zeros(layout.OutFeatures, layout.InFeatures, dtype: ScalarType.Float32, device: w.device);   // [m, n]
        for (int k = 0; k < layout.K; k++)
        {
            if (a[k] is null || b[k] is null) continue;
            var rows = tensor(layout.Rows[k], device: w.device);                       // [|R_k|]
            var cols = tensor(layout.Cols[k], device: w.device);                       // [|C_k|]
            var anchor = w.index_select(0, rows).index_select(1, cols);                // M_k [|R_k|, |C_k|]
            var block = b[k]!.to(ScalarType.Float32).matmul(a[k]!.to(ScalarType.Float32)) * anchor;   // (B_k A_k) ⊙ M_k
            var blockRows = zeros(rows.shape[0], layout.InFeatures, dtype: ScalarType.Float32, device: w.device);
            blockRows.index_copy_(1, cols, block);                                     // [|R_k|, n]: rows R_k of ΔW (only block k touches them)
            delta.index_copy_(0, rows, blockRows);
        }
        return (delta * scale).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// y + Σ over blocks of ((B_k A_k) ⊙ M_k) x for n batch rows that each use their own adapter, every block padded to
    /// a common size so that all K blocks and all rows go through ONE batched GEMM against the shared anchors:
    ///   xg   = x[:, colIndex]                            [n·T, K·Cmax] → [K, n, T, 1, Cmax]
    ///   u    = A[k, row] ⊙ xg   (each rank j)            [K, n·T·rpad, Cmax]          (a_j ⊙ x)
    ///   z    = u · M_kᵀ                                  [K, n·T·rpad, Rmax]          M (a_j ⊙ x): the one GEMM
    ///   o    = Σ_j Bt[k, row, j] ⊙ z[.., j, :]           [n, T, K, Rmax]              Σ_j b_j ⊙ (...)
    ///   y[:, :, rowIndex[p]] += o[:, :, p]               [n, T, m]                    back to W's row order
    /// Padding is zero in A, Bt and the anchors, so it contributes nothing (padded outputs add 0 to row 0). The scale is
    /// folded into Bt. Permutations use gather / scatter_add on the last dim (index_select there is slow on CPU).
    /// </summary>
    /// <param name="x">[n, T, in] in the compute dtype</param>
    /// <param name="y">[n, T, m], W x of the same rows: updated in place (a column slice of a wider output is fine)</param>
    /// <returns>y</returns>
    /// <param name="anchorsT">M_kᵀ zero-padded, [K, Cmax, Rmax] (a transposed view is fine)</param>
    /// <param name="a">per-row A_k, zero-padded, [K, n, rpad, Cmax]</param>
    /// <param name="bt">per-row scale·B_kᵀ, zero-padded, [K, n, rpad, Rmax]</param>
    /// <param name="colIndex">[K·Cmax] input column feeding padded position (k, c)</param>
    /// <param name="rowIndex">[K·Rmax] output row fed by padded position (k, j) (padding: 0)</param>
    public static Tensor AddBatchedDelta(Tensor x, Tensor y, Tensor anchorsT, Tensor a, Tensor bt, Tensor colIndex, Tensor rowIndex)
    {
        long n = x.shape[0], t = x.shape[1], rows = n * t, m = y.shape[2];
        long k = anchorsT.shape[0], cmax = anchorsT.shape[1], rmax = anchorsT.shape[2], rpad = a.shape[2];
        var xg = x.reshape(rows, x.shape[2]).gather(1, colIndex.expand(rows, k * cmax));          // [n·T, K·Cmax]
        var u = a.unsqueeze(2) * xg.view(n, t, k, 1, cmax).permute(2, 0, 1, 3, 4);                // [K, n, T, rpad, Cmax]
        var z = bmm(u.reshape(k, rows * rpad, cmax), anchorsT);                                    // [K, n·T·rpad, Rmax]
        var zb = z.view(k, n, t, rpad, rmax) * bt.unsqueeze(2);                                    // [K, n, T, rpad, Rmax]
        var o = zb.permute(1, 2, 0, 3, 4).sum(3);                                                  // [n, T, K, Rmax] (contiguous)
        y.view(rows, m).scatter_add_(1, rowIndex.expand(rows, k * rmax), o.reshape(rows, k * rmax));
        return y;
    }

    /// <summary>
    /// The same y + ΔW x as <see cref="AddBatchedDelta"/>, for rows with many tokens each (prefill): each row's
    /// adapter blocks (B_k A_k) ⊙ M_k are formed once, transiently, and applied to its T tokens with one bmm —
    /// n·K·(rpad + T)·Rmax·Cmax multiply-adds instead of n·K·T·rpad·Rmax·Cmax. Never kept, never used for decode.
    /// </summary>
    /// <param name="x">[n, T, in]</param>
    /// <param name="y">[n, T, m]: updated in place, as in <see cref="AddBatchedDelta"/></param>
    /// <returns>y</returns>
    public static Tensor AddBlockwiseDelta(Tensor x, Tensor y, Tensor anchorsT, Tensor a, Tensor bt, Tensor colIndex, Tensor rowIndex)
    {
        long n = x.shape[0], t = x.shape[1], rows = n * t, m = y.shape[2];
        long k = anchorsT.shape[0], cmax = anchorsT.shape[1], rmax = anchorsT.shape[2];
        var blocksT = matmul(a.transpose(2, 3), bt) * anchorsT.unsqueeze(1);                      // [K, n, Cmax, Rmax]: ((B_k A_k) ⊙ M_k)ᵀ
        var xg = x.reshape(rows, x.shape[2]).gather(1, colIndex.expand(rows, k * cmax));          // [n·T, K·Cmax]
        var xk = xg.view(n, t, k, cmax).permute(2, 0, 1, 3).reshape(k * n, t, cmax);              // [K·n, T, Cmax]
        var o = bmm(xk, blocksT.view(k * n, cmax, rmax)).view(k, n, t, rmax);                      // [K, n, T, Rmax]
        var flat = o.permute(1, 2, 0, 3).reshape(rows, k * rmax);                                  // [n·T, K·Rmax]
        y.view(rows, m).scatter_add_(1, rowIndex.expand(rows, k * rmax), flat);
        return y;
    }

    /// <summary>
    /// The block factors placed into full-size HiRA factors (every block's ranks one after another):
    ///   A' [r, n]: row (k, j) = A_k[j] at columns C_k, zero elsewhere;
    ///   scale·B'ᵀ [r, m]: row (k, j) = scale · B_k[:, j] at rows R_k, zero elsewhere.
    /// Then (B' A')[i, c] = Σ_k Σ_j B_k[i, j] A_k[j, c] is non-zero only on the blocks R_k × C_k, so (B' A') ⊙ W · scale is
    /// exactly the <see cref="DenseDelta"/> of the spec.
    /// </summary>
    /// <returns>A' and scale·B'ᵀ in the dtype and on the device of the factors</returns>
    public static (Tensor A, Tensor Bt) FoldFactors(SmoaLayout layout, IReadOnlyList<Tensor?> a, IReadOnlyList<Tensor?> b, double scale)
    {
        using var scope = NewDisposeScope();
        var first = a.First(t => t is not null)!;
        long r = a.Where(t => t is not null).Sum(t => t!.shape[0]);
        var foldedA = zeros(r, layout.InFeatures, dtype: first.dtype, device: first.device);    // [r, n]
        var foldedBt = zeros(r, layout.OutFeatures, dtype: first.dtype, device: first.device);  // [r, m]
        long offset = 0;
        for (int k = 0; k < layout.K; k++)
        {
            if (a[k] is null || b[k] is null) continue;
            long rk = a[k]!.shape[0];
            foldedA.narrow(0, offset, rk).index_copy_(1, tensor(layout.Cols[k], device: first.device), a[k]!);
            foldedBt.narrow(0, offset, rk).index_copy_(1, tensor(layout.Rows[k], device: first.device), b[k]!.t() * scale);
            offset += rk;
        }
        return (foldedA.MoveToOuterDisposeScope(), foldedBt.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// ΔW x for one token per row, each row with its own folded factors, through the HiRA identity
    /// ((B' A') ⊙ W) x = Σ_j b'_j ⊙ (W (a'_j ⊙ x)): all rows' and ranks' inputs go through ONE GEMM with the frozen W.
    /// </summary>
    /// <param name="x">[n, 1, in]</param>
    /// <param name="a">A' per row [n, r, in]</param>
    /// <param name="bt">scale·B'ᵀ per row [n, r, out]</param>
    /// <param name="w">W [out, in]</param>
    /// <returns>ΔW x [n, 1, out]</returns>
    public static Tensor FoldedDecodeDelta(Tensor x, Tensor a, Tensor bt, Tensor w)
    {
        var u = x * a;                                    // [n, r, in]: a'_j ⊙ x
        var z = nn.functional.linear(u, w);               // [n, r, out]: W (a'_j ⊙ x)
        return (z * bt).sum(1, keepdim: true);            // [n, 1, out]: Σ_j b'_j ⊙ (...)
    }

    /// <summary>
    /// ΔW x for rows with several tokens (prefill): each row's ΔWᵀ = ((B' A') ⊙ W)ᵀ is formed transiently and applied to
    /// its T tokens — (r + T)·out·in multiply-adds per row instead of T·r·out·in.
    /// </summary>
    /// <param name="x">[n, T, in]</param>
    /// <returns>ΔW x [n, T, out]</returns>
    public static Tensor FoldedDenseDelta(Tensor x, Tensor a, Tensor bt, Tensor w)
    {
        var deltaT = bmm(a.transpose(1, 2), bt) * w.t();  // [n, in, out]: (B' A')ᵀ ⊙ Wᵀ
        return bmm(x, deltaT);                            // [n, T, out]
    }
}
