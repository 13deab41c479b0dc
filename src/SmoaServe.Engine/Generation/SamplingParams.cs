namespace SmoaServe.Engine.Generation;

/// <summary>
/// How one sequence is sampled and when it ends (the sampling fields of an OpenAI / vLLM request). Temperature 0 is
/// greedy; TopK 0, TopP 1, MinP 0, penalties 0 (repetition 1) and no bias leave the logits alone; a seed makes
/// sampling repeatable. TopLogprobs null: no logprobs.
/// </summary>
public sealed record SamplingParams
{
    public double Temperature { get; init; }
    /// <summary>0 = no top-k filter.</summary>
    public int TopK { get; init; }
    public double TopP { get; init; } = 1.0;
    public double MinP { get; init; }
    public float PresencePenalty { get; init; }
    public float FrequencyPenalty { get; init; }
    public float RepetitionPenalty { get; init; } = 1f;
    public IReadOnlyDictionary<int, float> LogitBias { get; init; } = new Dictionary<int, float>();
    /// <summary>The request's seed; choice i samples with seed + i (<see cref="CounterRng.RowSeed"/>). Null: random.</summary>
    public long? Seed { get; init; }
    /// <summary>Return the chosen id's logprob and this many alternatives (0..20); null: no logprobs.</summary>
    public int? TopLogprobs { get; init; }
    /// <summary>Most tokens to generate (capped further by the runner's sequence length).</summary>
    public int MaxTokens { get; init; } = 16;
    /// <summary>Token ids that end the sequence (EOS); the stop token itself is emitted and counted.</summary>
    public IReadOnlySet<int> StopTokenIds { get; init; } = new HashSet<int>();

    public bool IsGreedy => Temperature <= 0;

    /// <summary>Throws ArgumentException with an OpenAI-style message for out-of-range values (→ HTTP 400).</summary>
    /// <param name="vocabSize">checks logit_bias ids against the vocabulary when given</param>
    public void Validate(int? vocabSize = null)
    {
        if (double.IsNaN(Temperature) || Temperature < 0) throw new ArgumentException($"temperature must be ≥ 0 (got {Temperature})");
        if (TopK < 0) throw new ArgumentException($"top-k must be ≥ 0 (got {TopK})");
        if (double.IsNaN(TopP) || TopP <= 0 || TopP > 1) throw new ArgumentException($"top-p must be in (0, 1] (got {TopP})");
        if (double.IsNaN(MinP) || MinP < 0 || MinP > 1) throw new ArgumentException($"min_p must be in [0, 1] (got {MinP})");
        if (!(PresencePenalty >= -2 && PresencePenalty <= 2)) throw new ArgumentException($"presence_penalty must be in [-2, 2] (got {PresencePenalty})");
        if (!(FrequencyPenalty >= -2 && FrequencyPenalty <= 2)) throw new ArgumentException($"frequency_penalty must be in [-2, 2] (got {FrequencyPenalty})");
        if (!(RepetitionPenalty > 0 && RepetitionPenalty <= 100)) throw new ArgumentException($"repetition_penalty must be in (0, 100] (got {RepetitionPenalty})");
        if (TopLogprobs is < 0 or > TokenLogprobs.MaxTopLogprobs)
            throw new ArgumentException($"top_logprobs must be in [0, {TokenLogprobs.MaxTopLogprobs}] (got {TopLogprobs})");
        if (vocabSize is not int vocab) return;
        if (LogitBias.Count > vocab) throw new ArgumentException("logit_bias has more entries than the vocabulary");
        foreach (var (id, bias) in LogitBias)
        {
            if ((uint)id >= (uint)vocab) throw new ArgumentException($"logit_bias token id {id} is outside the vocabulary (0..{vocab - 1})");
            if (!float.IsFinite(bias)) throw new ArgumentException($"logit_bias for token {id} must be a finite number");
        }
    }
}
