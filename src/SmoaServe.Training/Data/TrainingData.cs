using System.Security.Cryptography;

namespace SmoaServe.Training.Data;

/// <summary>
/// The examples of a training run and the order they are seen in: every epoch a fresh shuffle (deterministic for the
/// seed and epoch), then either one example per row (padded batches) or, with packing, examples laid one after another
/// into rows of at most <see cref="RowLength"/> tokens (never split). A batch is <c>batchSize</c> consecutive rows.
/// </summary>
public sealed class TrainingData
{
    public IReadOnlyList<TokenizedExample> Examples { get; }
    public bool Packing { get; }
    /// <summary>Longest row (packing) and longest example.</summary>
    public int RowLength { get; }

    public TrainingData(IReadOnlyList<TokenizedExample> examples, int rowLength, bool packing = false)
    {
        if (examples.Count == 0) throw new ArgumentException("no training examples");
        if (rowLength < 2) throw new ArgumentOutOfRangeException(nameof(rowLength), "rows need at least 2 tokens");
        foreach (var e in examples)
        {
            if (e.Ids.Length != e.Trained.Length) throw new ArgumentException($"example (line {e.Line}): ids and trained flags differ in length");
            if (e.Ids.Length > rowLength) throw new ArgumentException($"example (line {e.Line}): {e.Ids.Length} tokens, longer than the row length {rowLength}");
        }
        Examples = examples;
        RowLength = rowLength;
        Packing = packing;
    }

    /// <summary>
    /// Rows of one epoch, in training order (each row: its examples). Without packing a row is one example and every
    /// epoch shuffles the examples; with packing the rows are packed once (from a shuffle fixed by the seed), so every
    /// epoch has the same number of rows, and every epoch shuffles the rows.
    /// </summary>
    public List<TokenizedExample[]> EpochRows(int epoch, ulong seed)
    {
        var rows = Packing ? PackedRows(seed) : Examples.Select(e => new[] { e }).ToList();
        var order = Enumerable.Range(0, rows.Count).ToArray();
        new Random(ShuffleSeed(seed, epoch)).Shuffle(order);
        return order.Select(i => rows[i]).ToList();
    }

    private (ulong Seed, List<TokenizedExample[]> Rows)? _packed;

    /// <summary>Examples in a seed-fixed shuffled order laid one after another into rows of at most <see cref="RowLength"/> tokens.</summary>
    private List<TokenizedExample[]> PackedRows(ulong seed)
    {
        if (_packed is { } cached && cached.Seed == seed) return cached.Rows;
        var order = Enumerable.Range(0, Examples.Count).ToArray();
        new Random(ShuffleSeed(seed, -1)).Shuffle(order);
        var rows = new List<TokenizedExample[]>();
        var current = new List<TokenizedExample>();
        int used = 0;
        foreach (int i in order)
        {
            var e = Examples[i];
            if (used + e.Ids.Length > RowLength && current.Count > 0)
            {
                rows.Add(current.ToArray());
                current.Clear();
                used = 0;
            }
            current.Add(e);
            used += e.Ids.Length;
        }
        if (current.Count > 0) rows.Add(current.ToArray());
        _packed = (seed, rows);
        return rows;
    }

    /// <summary>System.Random's seeded generator is stable across .NET versions; the seed is a SplitMix64 of (seed, epoch).</summary>
    private static int ShuffleSeed(ulong seed, int epoch)
    {
        ulong z = unchecked(seed + 0x9E3779B97F4A7C15UL * (ulong)(epoch + 2));
        z = unchecked((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL);
        z = unchecked((z ^ (z >> 27)) * 0x94D049BB133111EBUL);
        return (int)((z ^ (z >> 31)) & int.MaxValue);
    }

    /// <summary>Optimizer steps in one epoch for batches of <paramref name="batchSize"/> rows (the last may be smaller).</summary>
    public int StepsPerEpoch(int batchSize, ulong seed) => (EpochRows(0, seed).Count + batchSize - 1) / batchSize;

    /// <summary>SHA-256 of every example's ids and trained flags and of the packing settings: a resumed run must see the same data.</summary>
    public string Fingerprint()
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        sha.AppendData(BitConverter.GetBytes(Examples.Count));
        sha.AppendData(BitConverter.GetBytes(RowLength));
        sha.AppendData(BitConverter.GetBytes(Packing));
        foreach (var e in Examples)
        {
            sha.AppendData(BitConverter.GetBytes(e.Ids.Length));
            sha.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(e.Ids.AsSpan()));
            sha.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(e.Trained.AsSpan()));
        }
        return Convert.ToHexString(sha.GetHashAndReset())[..24].ToLowerInvariant();
    }
}
