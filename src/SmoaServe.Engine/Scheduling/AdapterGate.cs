namespace SmoaServe.Engine.Scheduling;

/// <summary>Whether a waiting request's adapter can run now.</summary>
public enum AdapterReadiness
{
    /// <summary>On the device: the request may be admitted.</summary>
    Ready,
    /// <summary>Being read or waiting for room on the device: the request stays queued (other rows go on).</summary>
    Loading,
    /// <summary>Unknown, removed, or failed to load: the request ends with an error.</summary>
    Missing,
}

/// <summary>
/// What the scheduler asks before admitting a request on an adapter, and tells while rows use one (so that an adapter
/// in use is never evicted or dropped under them). Called on the model thread only.
/// </summary>
public interface IAdapterGate
{
    /// <summary>Readiness of <paramref name="adapterId"/>; may start its load (a disk read off the model thread, or the
    /// device copy right here). <paramref name="error"/> says why when <see cref="AdapterReadiness.Missing"/>.</summary>
    AdapterReadiness Prepare(string adapterId, out string? error);
    /// <summary>A row starts using the adapter (after <see cref="Prepare"/> said Ready in the same pass).</summary>
    void Acquire(string adapterId);
    /// <summary>A row stopped using it (finished, cancelled, failed or preempted).</summary>
    void Release(string adapterId);
}

/// <summary>What the model thread saw at its last step, for metrics and routing (read from any thread).</summary>
public sealed record SchedulerSnapshot(int Running, int Waiting, int Slots, IReadOnlyList<string> RunningAdapters, IReadOnlyList<string> WaitingAdapters,
    IReadOnlyDictionary<string, int> RunningByOwner, IReadOnlyDictionary<string, int> WaitingByOwner, long Preemptions)
{
    public static SchedulerSnapshot Empty { get; } = new(0, 0, 0, [], [], new Dictionary<string, int>(), new Dictionary<string, int>(), 0);
    /// <summary>Share of the KV slots held by running sequences (each slot reserves a whole context).</summary>
    public double KvSlotUsage => Slots == 0 ? 0 : (double)Running / Slots;
}
