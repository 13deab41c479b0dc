namespace SmoaServe.Engine.Generation;

/// <summary>
/// The OpenAI / vLLM request-level edits of one row of logits, in place, each exactly as its API defines it.
/// <see cref="SequenceSampler"/> applies them in the order bias → repetition → presence/frequency → min_p, then
/// temperature, top-k and top-p.
/// </summary>
public static class LogitsProcessors
{
    /// <summary>OpenAI's bound on logit_bias values.</summary>
    public const float MaxBias = 100f;

    /// <summary>logit[t] += bias[t], each bias clamped to [−100, 100] (ids outside the row are ignored).</summary>
    public static void ApplyLogitBias(Span<float> logits, IReadOnlyDictionary<int, float> bias)
    {
        foreach (var (id, b) in bias)
            if ((uint)id < (uint)logits.Length && float.IsFinite(b)) logits[id] += Math.Clamp(b, -MaxBias, MaxBias);
    }

    /// <summary>
    /// Hugging Face / vLLM repetition_penalty over every id seen (prompt and generated, each once): a positive logit
    /// is divided by the penalty, a negative one multiplied.
    /// </summary>
    public static void ApplyRepetitionPenalty(Span<float> logits, IEnumerable<int> seenIds, float penalty)
    {
        if (penalty == 1f) return;
        foreach (var id in seenIds)
        {
            if ((uint)id >= (uint)logits.Length) continue;
            var l = logits[id];
            logits[id] = l > 0 ? l / penalty : l * penalty;
        }
    }

    /// <summary>
    /// OpenAI presence and frequency penalties over the generated ids:
    /// logit[t] −= presence · [count[t] &gt; 0] + frequency · count[t].
    /// </summary>
    public static void ApplyPresenceFrequency(Span<float> logits, IReadOnlyDictionary<int, int> generatedCounts, float presence, float frequency)
    {
        if (presence == 0f && frequency == 0f) return;
        foreach (var (id, count) in generatedCounts)
            if ((uint)id < (uint)logits.Length && count > 0) logits[id] -= presence + frequency * count;
    }

    /// <summary>
    /// vLLM min_p: with probabilities p = softmax(logits / T), ids with p &lt; minP · max p are removed (−∞).
    /// Equivalently logit &lt; max logit + T · ln(minP). Greedy (T ≤ 0) keeps the argmax, so nothing changes it.
    /// </summary>
    public static void ApplyMinP(Span<float> logits, double minP, double temperature)
    {
        if (minP <= 0 || temperature <= 0 || logits.Length == 0) return;
        var max = float.NegativeInfinity;
        foreach (var l in logits) if (l > max) max = l;
        if (float.IsNegativeInfinity(max)) return;
        // compare in probability space relative to the max: exp((l − max)/T) < minP
        for (var i = 0; i < logits.Length; i++)
        {
            var l = logits[i];
            if (float.IsNaN(l) || Math.Exp((l - (double)max) / temperature) < minP) logits[i] = float.NegativeInfinity;
        }
    }
}
