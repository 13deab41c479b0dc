namespace SmoaServe.Engine.Generation;

/// <summary>One candidate and its log-probability.</summary>
public readonly record struct TokenLogprob(int TokenId, double Logprob);

/// <summary>The chosen id's log-probability and the most likely alternatives at one generated position.</summary>
public sealed record PositionLogprobs(TokenLogprob Chosen, IReadOnlyList<TokenLogprob> Top);

/// <summary>Log-softmax of a logits row and its top-n entries (ties by lower id first), in double precision.</summary>
public static class TokenLogprobs
{
    /// <summary>OpenAI's limit on top_logprobs.</summary>
    public const int MaxTopLogprobs = 20;

    /// <summary>log Σ exp(logit); NaN counts as −∞.</summary>
    public static double LogSumExp(ReadOnlySpan<float> logits)
    {
        var max = double.NegativeInfinity;
        foreach (var l in logits) if (l > max) max = l;
        if (double.IsNegativeInfinity(max)) return double.NegativeInfinity;
        double sum = 0;
        foreach (var l in logits) if (!float.IsNaN(l)) sum += Math.Exp(l - max);
        return max + Math.Log(sum);
    }

    public static double[] LogSoftmax(ReadOnlySpan<float> logits)
    {
        var lse = LogSumExp(logits);
        var result = new double[logits.Length];
        for (var i = 0; i < logits.Length; i++) result[i] = float.IsNaN(logits[i]) ? double.NegativeInfinity : logits[i] - lse;
        return result;
    }

    /// <summary>The <paramref name="chosen"/> id's log-probability and the <paramref name="top"/> best ids, best first, ties by id.</summary>
    public static PositionLogprobs At(ReadOnlySpan<float> logits, int chosen, int top)
    {
        if ((uint)chosen >= (uint)logits.Length) throw new ArgumentOutOfRangeException(nameof(chosen));
        top = Math.Clamp(top, 0, logits.Length);
        var lse = LogSumExp(logits);

        // the top entries by a bounded insertion: (value desc, id asc)
        var best = new List<int>(top + 1);
        for (var i = 0; i < logits.Length && top > 0; i++)
        {
            var v = float.IsNaN(logits[i]) ? float.NegativeInfinity : logits[i];
            if (best.Count == top)
            {
                var last = best[^1];
                var lv = float.IsNaN(logits[last]) ? float.NegativeInfinity : logits[last];
                if (v <= lv) continue;                               // equal values keep the lower id already in
            }
            var pos = best.Count;
            while (pos > 0)
            {
                var p = best[pos - 1];
                var pv = float.IsNaN(logits[p]) ? float.NegativeInfinity : logits[p];
                if (pv >= v) break;
                pos--;
            }
            best.Insert(pos, i);
            if (best.Count > top) best.RemoveAt(best.Count - 1);
        }
        var topList = new TokenLogprob[best.Count];
        for (var i = 0; i < best.Count; i++) topList[i] = new TokenLogprob(best[i], LogProb(logits[best[i]], lse));
        return new PositionLogprobs(new TokenLogprob(chosen, LogProb(logits[chosen], lse)), topList);
    }

    static double LogProb(float logit, double lse) => float.IsNaN(logit) ? double.NegativeInfinity : logit - lse;
}
