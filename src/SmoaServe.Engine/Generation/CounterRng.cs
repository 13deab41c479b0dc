namespace SmoaServe.Engine.Generation;

/// <summary>
/// Stateless, counter-based random draws: the uniform for a row's step is a hash of (row seed, step), so a row's
/// samples do not depend on which other requests share its batch, in what order rows are sampled, or on retries.
/// SplitMix64's finaliser (a bijective avalanche mix) applied to the seed and again to the seed-keyed counter.
/// </summary>
public static class CounterRng
{
    const ulong Golden = 0x9E3779B97F4A7C15UL;

    public static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>64 random bits for (<paramref name="seed"/>, <paramref name="counter"/>).</summary>
    public static ulong Bits(ulong seed, ulong counter) => Mix(Mix(seed + Golden) + (counter + 1) * Golden);

    /// <summary>A uniform double in [0, 1) (53 random bits).</summary>
    public static double Uniform(ulong seed, ulong counter) => (Bits(seed, counter) >> 11) * (1.0 / (1UL << 53));

    /// <summary>
    /// The seed of choice <paramref name="index"/> of a request with <paramref name="requestSeed"/>: seed + index, so
    /// the n choices of one request are exactly the single-choice requests with seeds seed, seed+1, …, seed+n−1.
    /// </summary>
    public static ulong RowSeed(long requestSeed, int index) => unchecked((ulong)requestSeed + (ulong)index);

    /// <summary>A fresh seed for a request that gave none.</summary>
    public static long NewSeed() => Random.Shared.NextInt64(long.MinValue, long.MaxValue);
}
