using System.Collections.Concurrent;

namespace SmoaServe.Server;

/// <summary>Counts each tenant's generation requests in flight, for the max_concurrent_requests quota.</summary>
public sealed class TenantLimiter
{
    private readonly ConcurrentDictionary<string, int> _inFlight = new(StringComparer.Ordinal);

    /// <summary>Takes one of <paramref name="max"/> places of <paramref name="owner"/>; false when all are taken.</summary>
    public bool TryEnter(string owner, int max)
    {
        while (true)
        {
            int current = _inFlight.GetOrAdd(owner, 0);
            if (current >= max) return false;
            if (_inFlight.TryUpdate(owner, current + 1, current)) return true;
        }
    }

    public void Exit(string owner) => _inFlight.AddOrUpdate(owner, 0, (_, n) => Math.Max(0, n - 1));

    public int InFlight(string owner) => _inFlight.GetValueOrDefault(owner);
}
