namespace SmoaServe.Engine.Generation;

/// <summary>Temperature 0 (or less) is greedy. TopK 0 and TopP 1 disable those filters. A seed makes sampling repeatable.</summary>
public sealed record SamplingOptions(double Temperature = 0, int TopK = 0, double TopP = 1.0, int? Seed = null)
{
    public bool IsGreedy => Temperature <= 0;

    public void Validate()
    {
        if (double.IsNaN(Temperature) || Temperature < 0) throw new ArgumentException($"temperature must be ≥ 0 (got {Temperature})");
        if (TopK < 0) throw new ArgumentException($"top-k must be ≥ 0 (got {TopK})");
        if (double.IsNaN(TopP) || TopP <= 0 || TopP > 1) throw new ArgumentException($"top-p must be in (0, 1] (got {TopP})");
    }
}

/// <summary>
/// Picks the next token from logits like Hugging Face generate: greedy argmax, or temperature → top-k → top-p →
/// sample from the softmax. Deterministic for a given seed (System.Random with a seed).
/// </summary>
public sealed class Sampler
{
    private readonly SamplingOptions _options;
    private readonly Random _random;

    public Sampler(SamplingOptions options)
    {
        options.Validate();
        _options = options;
        _random = options.Seed is int seed ? new Random(seed) : new Random();
    }

    public int Sample(ReadOnlySpan<float> logits)
    {
        if (logits.Length == 0) throw new ArgumentException("empty logits");
        if (_options.IsGreedy) return ArgMax(logits);

        var candidates = Candidates(logits);                 // (id, logit / T), best first
        candidates = TopK(candidates, _options.TopK);
        var probs = Softmax(candidates);
        int keep = TopPCount(probs, _options.TopP);
        return Draw(candidates, probs, keep);
    }

    /// <summary>First index of the maximum (torch.argmax's tie rule).</summary>
    public static int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }

    private (int Id, double Logit)[] Candidates(ReadOnlySpan<float> logits)
    {
        var c = new (int, double)[logits.Length];
        for (int i = 0; i < logits.Length; i++) c[i] = (i, logits[i] / _options.Temperature);
        // descending by logit, ties by id (stable and deterministic)
        Array.Sort(c, (a, b) => a.Item2 != b.Item2 ? b.Item2.CompareTo(a.Item2) : a.Item1.CompareTo(b.Item1));
        return c;
    }

    private static (int Id, double Logit)[] TopK((int Id, double Logit)[] sorted, int k)
    {
        if (k <= 0 || k >= sorted.Length) return sorted;
        // HF keeps every token whose logit is ≥ the k-th largest (ties at the boundary survive)
        double kth = sorted[k - 1].Logit;
        int n = k;
        while (n < sorted.Length && sorted[n].Logit >= kth) n++;
        return sorted[..n];
    }

    private static double[] Softmax((int Id, double Logit)[] sorted)
    {
        double max = sorted[0].Logit, sum = 0;
        var p = new double[sorted.Length];
        for (int i = 0; i < p.Length; i++) sum += p[i] = double.IsNegativeInfinity(sorted[i].Logit) ? 0 : Math.Exp(sorted[i].Logit - max);
        for (int i = 0; i < p.Length; i++) p[i] /= sum;
        return p;
    }

    /// <summary>Smallest prefix (best first) whose probability mass reaches top_p; always at least one token.</summary>
    private static int TopPCount(double[] probs, double topP)
    {
        if (topP >= 1) return probs.Length;
        double before = 0;
        int n = 0;
        while (n < probs.Length && (n == 0 || before < topP)) before += probs[n++];
        return n;
    }

    private int Draw((int Id, double Logit)[] sorted, double[] probs, int keep)
    {
        double total = 0;
        for (int i = 0; i < keep; i++) total += probs[i];
        double u = _random.NextDouble() * total;
        for (int i = 0; i < keep; i++)
        {
            u -= probs[i];
            if (u < 0) return sorted[i].Id;
        }
        return sorted[keep - 1].Id;
    }
}
