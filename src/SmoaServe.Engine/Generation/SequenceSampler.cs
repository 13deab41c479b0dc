using SmoaServe.Text.Structured;

namespace SmoaServe.Engine.Generation;

/// <summary>A sampled id, with its logprobs when requested.</summary>
public readonly record struct SampledToken(int TokenId, PositionLogprobs? Logprobs);

/// <summary>
/// Samples one output sequence step by step from raw model logits: grammar mask (structured output), logit bias,
/// repetition penalty (prompt + generated), presence/frequency penalties (generated), min_p, then temperature /
/// top-k / top-p with a uniform drawn from (row seed, step) — so a row's tokens depend only on its own logits,
/// parameters and seed, not on the batch it runs in. Logprobs are the log-softmax of the raw logits (before any of
/// these edits), as vLLM reports them by default. Not thread-safe; one per sequence.
/// </summary>
public sealed class SequenceSampler
{
    readonly SamplingParams _p;
    readonly Sampler _sampler;
    readonly HashSet<int> _seen;
    readonly Dictionary<int, int> _counts = new();
    float[] _scratch = [];

    /// <param name="rowSeed">this sequence's seed (<see cref="CounterRng.RowSeed"/>)</param>
    /// <param name="grammar">constrains the output (response_format / tool arguments); accepts every sampled id</param>
    public SequenceSampler(SamplingParams parameters, IReadOnlyList<int> promptIds, ulong rowSeed, GrammarMatcher? grammar = null)
    {
        _p = parameters;
        _sampler = new Sampler(parameters);
        _seen = parameters.RepetitionPenalty != 1f ? promptIds.ToHashSet() : [];
        RowSeed = rowSeed;
        Grammar = grammar;
    }

    public ulong RowSeed { get; }
    public GrammarMatcher? Grammar { get; }

    /// <summary>Ids sampled so far.</summary>
    public int Step { get; private set; }

    /// <summary>The next id for this row; <paramref name="logits"/> (the model's scores) are left unchanged.</summary>
    public SampledToken Next(ReadOnlySpan<float> logits)
    {
        ReadOnlySpan<float> work = logits;
        if (EditsLogits)
        {
            if (_scratch.Length != logits.Length) _scratch = new float[logits.Length];
            logits.CopyTo(_scratch);
            Process(_scratch);
            work = _scratch;
        }
        var id = _p.Temperature <= 0 ? Sampler.ArgMax(work) : _sampler.Sample(work, CounterRng.Uniform(RowSeed, (ulong)Step));
        var lp = _p.TopLogprobs is int top ? TokenLogprobs.At(logits, id, top) : null;
        Record(id);
        return new SampledToken(id, lp);
    }

    /// <summary>Whether any edit applies (otherwise the model's row is sampled as it is, without a copy).</summary>
    bool EditsLogits => Grammar is not null || _p.LogitBias.Count > 0 || _p.RepetitionPenalty != 1f || _p.PresencePenalty != 0f
                        || _p.FrequencyPenalty != 0f || (_p.MinP > 0 && _p.Temperature > 0);

    /// <summary>The logits edits in order (mask, bias, repetition, presence/frequency, min_p), in place.</summary>
    public void Process(Span<float> logits)
    {
        Grammar?.MaskLogits(logits);
        if (_p.LogitBias.Count > 0) LogitsProcessors.ApplyLogitBias(logits, _p.LogitBias);
        LogitsProcessors.ApplyRepetitionPenalty(logits, _seen, _p.RepetitionPenalty);
        LogitsProcessors.ApplyPresenceFrequency(logits, _counts, _p.PresencePenalty, _p.FrequencyPenalty);
        LogitsProcessors.ApplyMinP(logits, _p.MinP, _p.Temperature);
    }

    /// <summary>Records an id as generated (done by <see cref="Next"/>; for ids forced from outside).</summary>
    public void Record(int id)
    {
        if (Grammar is not null && !Grammar.Accept(id))
            throw new InvalidOperationException($"token {id} does not fit the output grammar");
        _counts[id] = _counts.GetValueOrDefault(id) + 1;
        if (_p.RepetitionPenalty != 1f) _seen.Add(id);
        Step++;
    }
}
