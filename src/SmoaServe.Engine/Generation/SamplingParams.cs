namespace SmoaServe.Engine.Generation;

/// <summary>
/// How one sequence is sampled and when it ends. Temperature 0 is greedy; TopK 0 and TopP 1 disable those filters;
/// a seed makes sampling repeatable (a 64-bit seed is folded to the 32 bits of the generator).
/// </summary>
public sealed record SamplingParams
{
    public double Temperature { get; init; }
    /// <summary>0 = no top-k filter.</summary>
    public int TopK { get; init; }
    public double TopP { get; init; } = 1.0;
    public long? Seed { get; init; }
    /// <summary>Most tokens to generate (capped further by the runner's sequence length).</summary>
    public int MaxTokens { get; init; } = 16;
    /// <summary>Token ids that end the sequence (EOS); the stop token itself is emitted and counted.</summary>
    public IReadOnlySet<int> StopTokenIds { get; init; } = new HashSet<int>();

    public bool IsGreedy => Temperature <= 0;

    public void Validate()
    {
        if (double.IsNaN(Temperature) || Temperature < 0) throw new ArgumentException($"temperature must be ≥ 0 (got {Temperature})");
        if (TopK < 0) throw new ArgumentException($"top-k must be ≥ 0 (got {TopK})");
        if (double.IsNaN(TopP) || TopP <= 0 || TopP > 1) throw new ArgumentException($"top-p must be in (0, 1] (got {TopP})");
    }
}
