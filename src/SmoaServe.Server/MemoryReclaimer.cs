namespace SmoaServe.Server;

/// <summary>
/// Returns memory to the system after bursts of large requests. Large bodies and prompts are transient large objects
/// (<see cref="RequestBody"/>); the garbage collector frees them only at its next full collection, which a quiet server may
/// not run for a long time, and a busy one runs without giving the freed memory back. Once a second this compares the
/// memory the collector holds committed with what was live after the last full collection: when it holds more than
/// twice that and at least <see cref="Threshold"/> more, and the server is quiet (no sequence running or waiting, and
/// less than an eighth of that allocated in the last second: the collection's pause then delays no stream) or holds more
/// than <see cref="BusyThreshold"/> too much, it runs one aggressive full collection, which compacts and decommits. At
/// most one every <see cref="MinInterval"/>.
/// </summary>
public sealed class MemoryReclaimer(SmoaServe.Engine.Hosting.EngineHost engine, ILogger<MemoryReclaimer> logger) : BackgroundService
{
    public const long Threshold = 64L << 20;
    public const long BusyThreshold = 512L << 20;
    public static readonly TimeSpan MinInterval = TimeSpan.FromSeconds(5);
    private static readonly TimeSpan Period = TimeSpan.FromSeconds(1);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        long live = GC.GetTotalMemory(forceFullCollection: false);
        long allocated = GC.GetTotalAllocatedBytes();
        var lastForced = DateTime.UtcNow - MinInterval;
        using var timer = new PeriodicTimer(Period);
        try
        {
            while (await timer.WaitForNextTickAsync(stoppingToken))
            {
                var info = GC.GetGCMemoryInfo(GCKind.FullBlocking);
                if (info.Index > 0) live = Math.Min(live, info.HeapSizeBytes - info.FragmentedBytes);
                long committed = GC.GetGCMemoryInfo(GCKind.Any).TotalCommittedBytes;
                long now = GC.GetTotalAllocatedBytes();
                bool quiet = now - allocated < Threshold / 8 && engine.Scheduler.InFlight == 0;
                allocated = now;
                if (committed < 2 * live || committed - live < Threshold || (!quiet && committed - live < BusyThreshold)
                    || DateTime.UtcNow - lastForced < MinInterval) continue;
                long before = Environment.WorkingSet;
                GC.Collect(2, GCCollectionMode.Aggressive, blocking: true, compacting: true);
                lastForced = DateTime.UtcNow;
                live = GC.GetTotalMemory(forceFullCollection: false);
                logger.LogDebug("Memory returned: {Committed} MB committed for {Live} MB live; working set {Before} MB -> {After} MB",
                    committed >> 20, live >> 20, before >> 20, Environment.WorkingSet >> 20);
            }
        }
        catch (OperationCanceledException) { }
    }
}
