using System.Diagnostics;

namespace SmoaServe.Engine.Model;

/// <summary>
/// The threads the CPU decode kernels run on: the caller plus <c>threads - 1</c> workers that stay awake (spinning)
/// for a short while after each piece of work, so the ~50 back-to-back kernel calls of a decode step start in about a
/// microsecond instead of waking pool threads each time (a wake-up costs tens of microseconds, comparable to streaming
/// a small projection's weights). A worker that has seen no work for <see cref="SpinTime"/> blocks and costs nothing.
/// One piece of work at a time: a second caller arriving while the workers are busy runs its work on its own thread.
/// </summary>
public sealed class CpuWorkers
{
    /// <summary>How long an idle worker spins before it blocks.</summary>
    public static readonly TimeSpan SpinTime = TimeSpan.FromMilliseconds(1);

    private static readonly object Create = new();
    private static CpuWorkers? _shared;

    /// <summary>The workers for <paramref name="threads"/> threads in all (rebuilt when the count changes).</summary>
    public static CpuWorkers For(int threads)
    {
        threads = Math.Clamp(threads, 1, 256);
        var current = Volatile.Read(ref _shared);
        if (current is not null && current.Threads == threads) return current;
        lock (Create)
        {
            if (_shared is null || _shared.Threads != threads)
            {
                _shared?.Stop();
                _shared = new CpuWorkers(threads);
            }
            return _shared;
        }
    }

    private readonly Thread[] _workers;
    private readonly SemaphoreSlim[] _wake;
    private readonly int[] _sleeping;
    private readonly object _busy = new();
    private readonly long _spinTicks = (long)(SpinTime.TotalSeconds * Stopwatch.Frequency);
    // the current piece of work: (generation << 32) | workers that joined it, with ClosedBit once the caller is done
    private long _state;
    private const long ClosedBit = 1L << 31;
    private int _finished;
    private Action<int>? _work;
    private Exception? _error;
    private volatile bool _stopped;

    /// <summary>Threads taking part in one piece of work (the caller included).</summary>
    public int Threads { get; }

    private CpuWorkers(int threads)
    {
        Threads = threads;
        _workers = new Thread[threads - 1];
        _wake = new SemaphoreSlim[threads - 1];
        _sleeping = new int[threads - 1];
        for (int i = 0; i < _workers.Length; i++)
        {
            int index = i;
            _wake[i] = new SemaphoreSlim(0);
            _workers[i] = new Thread(() => Loop(index)) { IsBackground = true, Name = $"smoa-cpu-kernel-{index + 1}" };
            _workers[i].Start();
        }
    }

    /// <summary>
    /// Runs <paramref name="work"/>(participant) on the caller (participant 0) and on every worker that joins before
    /// the caller's own call returns, then waits for the workers that joined. The work divides itself (a shared chunk
    /// counter), so a worker that is asleep or descheduled simply does not join and nobody waits for it.
    /// </summary>
    public void Run(Action<int> work)
    {
        if (_workers.Length == 0 || !Monitor.TryEnter(_busy)) { work(0); return; }
        try
        {
            _work = work;
            Volatile.Write(ref _finished, 0);
            long generation = (Volatile.Read(ref _state) >> 32) + 1;
            Interlocked.Exchange(ref _state, generation << 32); // full fence: the work is visible before the new generation
            for (int i = 0; i < _workers.Length; i++)
                if (Volatile.Read(ref _sleeping[i]) == 1) _wake[i].Release();
            try { work(0); }
            finally
            {
                long closed = Interlocked.Or(ref _state, ClosedBit); // no worker joins after this
                int joined = (int)(closed & (ClosedBit - 1));
                var spin = new SpinWait();
                while (Volatile.Read(ref _finished) != joined) spin.SpinOnce(sleep1Threshold: -1);
                _work = null;
            }
            if (Interlocked.Exchange(ref _error, null) is { } error) throw new AggregateException(error);
        }
        finally { Monitor.Exit(_busy); }
    }

    private void Loop(int index)
    {
        long seen = 0;
        while (!_stopped)
        {
            long start = Stopwatch.GetTimestamp();
            while ((Volatile.Read(ref _state) >> 32) == seen && !_stopped)
            {
                if (Stopwatch.GetTimestamp() - start < _spinTicks) { Thread.SpinWait(16); continue; }
                Interlocked.Exchange(ref _sleeping[index], 1); // full fence before the generation is read again
                if ((Volatile.Read(ref _state) >> 32) == seen && !_stopped) _wake[index].Wait();
                Interlocked.Exchange(ref _sleeping[index], 0);
                start = Stopwatch.GetTimestamp();
            }
            if (_stopped) return;
            long state = Volatile.Read(ref _state);
            seen = state >> 32;
            if (!TryJoin(state)) continue; // the caller finished without this worker
            try { _work!(index + 1); }
            catch (Exception e) { Interlocked.CompareExchange(ref _error, e, null); }
            finally { Interlocked.Increment(ref _finished); }
        }
    }

    /// <summary>Counts this worker in while the piece of work of <paramref name="state"/>'s generation is still open.</summary>
    private bool TryJoin(long state)
    {
        while ((state & ClosedBit) == 0)
        {
            long was = Interlocked.CompareExchange(ref _state, state + 1, state);
            if (was == state) return true;
            if (was >> 32 != state >> 32) return false; // a newer piece of work: the loop sees it next
            state = was;
        }
        return false;
    }

    private void Stop()
    {
        // called under the creation lock when the thread count changes; waits for a piece of work in progress
        lock (_busy)
        {
            _stopped = true;
            foreach (var w in _wake) w.Release();
        }
    }
}
