namespace SmoaServe.Engine.Generation;

/// <summary>
/// Picks the next token from logits like Hugging Face generate: greedy argmax, or temperature → top-k → top-p →
/// sample from the softmax. Deterministic for a given seed (System.Random with a seed).
/// </summary>
public sealed class Sampler
{
    private readonly SamplingParams _options;
    private readonly Random _random;

    public Sampler(SamplingParams options)
    {
        options.Validate();
        _options = options;
        _random = options.Seed is long seed ? new Random(unchecked((int)(seed ^ (seed >> 32)))) : new Random();
    }

    public int Sample(ReadOnlySpan<float> logits)
    {
        if (logits.Length == 0) throw new ArgumentException("empty logits");
        return _options.IsGreedy ? ArgMax(logits) : Sample(logits, _random.NextDouble());
    }

    /// <summary>
    /// Samples with the given uniform draw in [0, 1) instead of the sampler's own generator (for draws derived from
    /// a request's seed and step, independent of what else is in the batch). Greedy ignores it.
    /// </summary>
    public int Sample(ReadOnlySpan<float> logits, double uniform)
    {
        if (logits.Length == 0) throw new ArgumentException("empty logits");
        if (_options.IsGreedy) return ArgMax(logits);
        if (!(uniform >= 0 && uniform < 1)) throw new ArgumentOutOfRangeException(nameof(uniform), "must be in [0, 1)");

        var scaled = new double[logits.Length];                      // logit / T; NaN (a broken adapter) counts as −∞
        for (int i = 0; i < scaled.Length; i++) scaled[i] = float.IsNaN(logits[i]) ? double.NegativeInfinity : logits[i] / _options.Temperature;
        // top-k: the k best, best first (ties at the boundary survive, as in HF); null = the whole vocabulary
        int[]? pool = _options.TopK > 0 && _options.TopK < scaled.Length ? Best(scaled, _options.TopK) : null;
        double max = pool is null ? scaled.Max() : scaled[pool[0]];
        if (_options.TopP >= 1)
            return pool is null ? Draw(scaled, max, uniform) : Draw(scaled, max, pool, pool.Length, uniform);

        // top-p: the smallest best-first prefix of the pool whose share of the pool's mass reaches p. Only as many
        // candidates as that needs are sorted (a 128k vocabulary is never sorted whole for one token).
        double poolMass = 0;
        if (pool is null) foreach (double l in scaled) poolMass += Weight(l, max);
        else foreach (int id in pool) poolMass += Weight(scaled[id], max);
        for (int n = Math.Min(64, scaled.Length); ; n = Math.Min(n * 8, scaled.Length))
        {
            var best = pool ?? Best(scaled, n);
            double mass = 0;
            for (int i = 0; i < best.Length; i++)
            {
                mass += Weight(scaled[best[i]], max);
                if (mass >= _options.TopP * poolMass) return Draw(scaled, max, best, i + 1, uniform);
            }
            if (pool is not null || best.Length >= scaled.Length) return Draw(scaled, max, best, best.Length, uniform);
        }
    }

    public static int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }

    /// <summary>exp(l − max): the unnormalised softmax weight.</summary>
    private static double Weight(double logit, double max) => double.IsNegativeInfinity(logit) ? 0 : Math.Exp(logit - max);

    /// <summary>
    /// Ids of the n largest values, best first (ties by id), plus any further ids tied with the n-th: a quickselect for
    /// the n-th value, then a sort of the few ids at or above it.
    /// </summary>
    private static int[] Best(double[] values, int n)
    {
        double nth = n >= values.Length ? values.Min() : NthLargest((double[])values.Clone(), n);
        var ids = new List<int>(n);
        for (int i = 0; i < values.Length; i++) if (values[i] >= nth) ids.Add(i);
        ids.Sort((a, b) => values[a] != values[b] ? values[b].CompareTo(values[a]) : a.CompareTo(b));
        return ids.ToArray();
    }

    /// <summary>The n-th largest element (1-based) of <paramref name="a"/>, which it reorders (Hoare quickselect).</summary>
    private static double NthLargest(double[] a, int n)
    {
        int lo = 0, hi = a.Length - 1, target = n - 1;   // position target in descending order
        while (lo < hi)
        {
            double pivot = a[(lo + hi) >>> 1];
            int i = lo, j = hi;
            while (i <= j)
            {
                while (a[i] > pivot) i++;
                while (a[j] < pivot) j--;
                if (i <= j) { (a[i], a[j]) = (a[j], a[i]); i++; j--; }
            }
            if (target <= j) hi = j;
            else if (target >= i) lo = i;
            else return a[target];
        }
        return a[target];
    }

    /// <summary>Samples from the first <paramref name="keep"/> candidates in proportion to their softmax weights.</summary>
    private static int Draw(double[] scaled, double max, int[] candidates, int keep, double uniform)
    {
        double total = 0;
        for (int i = 0; i < keep; i++) total += Weight(scaled[candidates[i]], max);
        double u = uniform * total;
        for (int i = 0; i < keep; i++)
        {
            u -= Weight(scaled[candidates[i]], max);
            if (u < 0) return candidates[i];
        }
        return candidates[keep - 1];
    }

    /// <summary>Samples from the whole vocabulary (no filter), walking it in id order.</summary>
    private static int Draw(double[] scaled, double max, double uniform)
    {
        double total = 0;
        foreach (double l in scaled) total += Weight(l, max);
        double u = uniform * total;
        int last = 0;
        for (int i = 0; i < scaled.Length; i++)
        {
            double w = Weight(scaled[i], max);
            if (w == 0) continue;
            last = i;
            u -= w;
            if (u < 0) return i;
        }
        return last;
    }
}
