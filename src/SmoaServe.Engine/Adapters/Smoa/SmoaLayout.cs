using System.Security.Cryptography;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Adapters.Smoa;

/// <summary>
/// The SMoA block layout of one frozen weight W [m, n] for K blocks (spec steps 1-3): row groups R_0..R_{K-1}
/// and column groups C_0..C_{K-1}, each a list of indices in ascending-score order. Block k is W[R_k, C_k].
/// Depends only on W and K, so it is computed once per (layer, module, K) and shared by every adapter.
/// </summary>
public sealed class SmoaLayout
{
    public int OutFeatures { get; }   // m
    public int InFeatures { get; }    // n
    public int K => Rows.Length;
    /// <summary>R_k: output-row indices of block k, [K][|R_k|].</summary>
    public long[][] Rows { get; }
    /// <summary>C_k: input-column indices of block k, [K][|C_k|].</summary>
    public long[][] Cols { get; }
    /// <summary>Content hash: two layouts with the same hash are the same layout (and share anchors).</summary>
    public string Hash { get; }

    private SmoaLayout(int m, int n, long[][] rows, long[][] cols)
    {
        OutFeatures = m; InFeatures = n; Rows = rows; Cols = cols;
        Hash = ComputeHash(m, n, rows, cols);
    }

    /// <summary>Spec steps 1-3: float32 SVD of W, spectral-index scores, stable ascending sort, tensor_split into K.</summary>
    /// <param name="weight">W [m, n], any float dtype / device</param>
    public static SmoaLayout Compute(Tensor weight, int k)
    {
        int m = (int)weight.shape[0], n = (int)weight.shape[1];
        CheckBlockCount(m, n, k, "weight");
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var w = weight.to(ScalarType.Float32);                               // [m, n]
        var (u, s, vh) = linalg.svd(w, fullMatrices: false);                  // u [m, q], s [q], vh [q, n]
        long[] rowOrder = SmoaMath.SpectralOrder(u, s);                       // [m]
        long[] colOrder = SmoaMath.SpectralOrder(vh.transpose(0, 1), s);      // [n]
        return new SmoaLayout(m, n, SplitLikeTensorSplit(rowOrder, k), SplitLikeTensorSplit(colOrder, k));
    }

    /// <summary>A layout read from an untrusted file: every index in range, each side a permutation, sizes as tensor_split.</summary>
    public static SmoaLayout FromIndices(int m, int n, long[][] rows, long[][] cols, string what)
    {
        if (rows.Length != cols.Length) throw new InvalidDataException($"{what}: {rows.Length} row groups but {cols.Length} column groups");
        CheckBlockCount(m, n, rows.Length, what);
        CheckPartition(rows, m, "smoa_rows", what);
        CheckPartition(cols, n, "smoa_cols", what);
        return new SmoaLayout(m, n, rows, cols);
    }

    /// <summary>Group sizes of torch.tensor_split(range(total), k): the first total mod k groups one larger.</summary>
    public static int[] SplitSizes(int total, int k)
    {
        var sizes = new int[k];
        for (int i = 0; i < k; i++) sizes[i] = total / k + (i < total % k ? 1 : 0);
        return sizes;
    }

    public static void CheckBlockCount(int m, int n, int k, string what)
    {
        if (k < 1 || k > Math.Min(m, n))
            throw new InvalidDataException($"{what}: num_blocks {k} must be between 1 and min(out, in) = {Math.Min(m, n)}");
    }

    private static long[][] SplitLikeTensorSplit(long[] order, int k)
    {
        var sizes = SplitSizes(order.Length, k);
        var groups = new long[k][];
        for (int i = 0, start = 0; i < k; start += sizes[i], i++) groups[i] = order[start..(start + sizes[i])];
        return groups;
    }

    private static void CheckPartition(long[][] groups, int total, string name, string what)
    {
        var sizes = SplitSizes(total, groups.Length);
        var seen = new bool[total];
        for (int g = 0; g < groups.Length; g++)
        {
            if (groups[g].Length != sizes[g])
                throw new InvalidDataException($"{what}: {name}.{g} has {groups[g].Length} indices, expected {sizes[g]} (tensor_split of {total} into {groups.Length})");
            foreach (long i in groups[g])
            {
                if (i < 0 || i >= total) throw new InvalidDataException($"{what}: {name}.{g} holds index {i}, outside [0, {total})");
                if (seen[i]) throw new InvalidDataException($"{what}: {name}.{g} repeats index {i}; the groups must form a permutation of 0..{total - 1}");
                seen[i] = true;
            }
        }
    }

    private static string ComputeHash(int m, int n, long[][] rows, long[][] cols)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        sha.AppendData(BitConverter.GetBytes(m)); sha.AppendData(BitConverter.GetBytes(n)); sha.AppendData(BitConverter.GetBytes(rows.Length));
        foreach (var g in rows.Concat(cols))
        {
            sha.AppendData(BitConverter.GetBytes(g.Length));
            sha.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(g.AsSpan()));
        }
        return Convert.ToHexString(sha.GetHashAndReset())[..16];
    }

    public bool SameAs(SmoaLayout other) => Hash == other.Hash && OutFeatures == other.OutFeatures && InFeatures == other.InFeatures
        && Rows.Zip(other.Rows).All(p => p.First.AsSpan().SequenceEqual(p.Second))
        && Cols.Zip(other.Cols).All(p => p.First.AsSpan().SequenceEqual(p.Second));
}
