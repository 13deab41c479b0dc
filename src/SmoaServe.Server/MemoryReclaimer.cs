namespace SmoaServe.Server;

/// <summary>
/// Returns memory to the system after bursts of large requests. Large bodies and prompts are transient large objects
/// (<see cref="RequestBody"/>); the garbage collector frees them only at its next full collection, which an otherwise
/// quiet server may not run for a long time, and keeps the freed memory committed. Once a second this checks how much
/// was allocated since the last full collection: after at least <see cref="Threshold"/> bytes, when the last second
/// allocated little (the burst is over), it runs one aggressive full collection, which also decommits the freed
/// memory. At most one every <see cref="MinInterval"/>; a busy server's own collections are left alone.
/// </summary>
public sealed class MemoryReclaimer(ILogger<MemoryReclaimer> logger) : BackgroundService
{
    public const long Threshold = 64L << 20;
    public static readonly TimeSpan MinInterval = TimeSpan.FromSeconds(5);
    private static readonly TimeSpan Period = TimeSpan.FromSeconds(1);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        long sinceCollection = GC.GetTotalAllocatedBytes();
        long previous = sinceCollection;
        int gen2 = GC.CollectionCount(2);
        var lastForced = DateTime.UtcNow - MinInterval;
        using var timer = new PeriodicTimer(Period);
        try
        {
            while (await timer.WaitForNextTickAsync(stoppingToken))
            {
                long now = GC.GetTotalAllocatedBytes();
                if (GC.CollectionCount(2) != gen2) { gen2 = GC.CollectionCount(2); sinceCollection = previous; }
                bool burstOver = now - previous < Threshold / 8;
                previous = now;
                if (now - sinceCollection < Threshold || !burstOver || DateTime.UtcNow - lastForced < MinInterval) continue;
                long before = Environment.WorkingSet;
                GC.Collect(2, GCCollectionMode.Aggressive, blocking: true, compacting: true);
                gen2 = GC.CollectionCount(2);
                sinceCollection = previous = GC.GetTotalAllocatedBytes();
                lastForced = DateTime.UtcNow;
                logger.LogDebug("Memory reclaimed after a burst: working set {Before} MB -> {After} MB", before >> 20, Environment.WorkingSet >> 20);
            }
        }
        catch (OperationCanceledException) { }
    }
}
