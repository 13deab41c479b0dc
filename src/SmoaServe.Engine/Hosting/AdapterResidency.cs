using System.Diagnostics;
using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Scheduling;

namespace SmoaServe.Engine.Hosting;

/// <summary>
/// Budgets of the adapter tiers (vLLM's --max-loras / --max-cpu-loras, LoRAX's tiered cache). Null = unbounded.
/// </summary>
public sealed record ResidencyOptions
{
    /// <summary>Most adapters on the device at once.</summary>
    public int? MaxDeviceAdapters { get; init; }
    /// <summary>Most device bytes of adapter factors at once (an adapter larger than this alone is still loaded).</summary>
    public long? MaxDeviceBytes { get; init; }
    /// <summary>Most host bytes of validated adapter factors kept in memory (float32) in front of the disk.</summary>
    public long? MaxHostBytes { get; init; } = 2L << 30;
    /// <summary>Adapter directories read at once (off the model thread).</summary>
    public int MaxConcurrentReads { get; init; } = 4;

    public IReadOnlyList<string> Problems()
    {
        var p = new List<string>();
        if (MaxDeviceAdapters is < 1) p.Add($"MaxDeviceAdapters must be >= 1 (got {MaxDeviceAdapters})");
        if (MaxDeviceBytes is < 1) p.Add($"MaxDeviceAdapterBytes must be >= 1 (got {MaxDeviceBytes})");
        if (MaxHostBytes is < 0) p.Add($"MaxHostAdapterBytes must be >= 0 (got {MaxHostBytes})");
        if (MaxConcurrentReads < 1) p.Add($"MaxConcurrentReads must be >= 1 (got {MaxConcurrentReads})");
        return p;
    }
}

/// <summary>Where an adapter is: only its files, its validated factors in host memory, or on the device.</summary>
public enum AdapterTier { Disk, Host, Device }

/// <summary>One adapter's residency as reported (no tensors).</summary>
public sealed record AdapterResidencyInfo(string Id, AdapterTier Tier, bool Pinned, int ActiveRows, long DeviceBytes, long HostBytes, string? Error);

/// <summary>
/// Load and eviction counts; load latencies from the first request that needed the adapter to device-ready (reading,
/// waiting for room, copying), and the device copies alone.
/// </summary>
public sealed record ResidencyStats(long Loads, long DeviceEvictions, long HostEvictions, IReadOnlyList<double> LoadSeconds, IReadOnlyList<double> CopySeconds);

/// <summary>
/// Which adapters are on the device, in host memory, or only on disk, keyed by engine id. Adapters load on first use:
/// a request on a cold adapter waits in the queue while its directory is read and validated off the model thread, then
/// its device copy is made on the model thread between two steps; other rows go on meanwhile. When a budget is full the
/// least recently used adapter that no running row uses and that is not pinned moves down a tier (device → host → disk).
/// An adapter removed while rows use it stays on the device until they finish; new requests no longer find it.
/// Adapters added from memory (no directory) cannot come back from disk: they stay on the device.
/// Thread safety: the scheduler calls <see cref="IAdapterGate"/> on the model thread; the rest may be called anywhere.
/// </summary>
public sealed class AdapterResidency : IAdapterGate, IDisposable
{
    private const int MaxLatencySamples = 8192;
    private readonly object _lock = new();
    private readonly Dictionary<string, Entry> _entries = new(StringComparer.Ordinal);
    private readonly Queue<double> _loadSeconds = new();
    private readonly Queue<double> _copySeconds = new();
    private IEngineBackend? _backend;
    private Func<Scheduler>? _scheduler;
    private long _clock, _loads, _deviceEvictions, _hostEvictions;
    private int _reads;

    public AdapterResidency(ResidencyOptions? options = null)
    {
        Options = options ?? new ResidencyOptions();
        if (Options.Problems() is { Count: > 0 } problems) throw new ArgumentException(string.Join("; ", problems));
    }

    public ResidencyOptions Options { get; }

    /// <summary>Called once the backend exists (on the model thread) and the scheduler that runs device work.</summary>
    internal void Attach(IEngineBackend backend, Func<Scheduler> scheduler)
    {
        lock (_lock)
        {
            _backend = backend;
            _scheduler = scheduler;
        }
    }

    /// <summary>
    /// Registers an adapter that loads on first use: from <paramref name="directory"/> (disk tier), or from
    /// <paramref name="hostCopy"/> (host tier; ownership passes here). Replaces a registration of that id that is not on the device.
    /// </summary>
    public void Register(string id, string? directory, AdapterDefinition? hostCopy = null, bool pinned = false)
    {
        if (directory is null && hostCopy is null) throw new ArgumentException("an adapter needs a directory or a definition");
        lock (_lock)
        {
            if (_entries.TryGetValue(id, out var old))
            {
                if (old.OnDevice || old.Refs > 0) throw new InvalidOperationException($"adapter '{id}' is registered and in use");
                DropHost(old);
            }
            _entries[id] = new Entry(id, directory) { Host = hostCopy, Pinned = pinned, LastUsed = ++_clock };
            EnforceHostBudget(null);
        }
    }

    /// <summary>
    /// Records that <paramref name="id"/> was just made resident (device copy done by the caller on the model thread):
    /// an eager load. <paramref name="hostCopy"/> (owned here from now on) lets it come back after an eviction; with neither it
    /// nor a directory the adapter is pinned.
    /// </summary>
    public void MarkResident(string id, string? directory, AdapterDefinition? hostCopy, long deviceBytes)
    {
        lock (_lock)
        {
            if (_entries.TryGetValue(id, out var e)) DropHost(e);
            else _entries[id] = e = new Entry(id, directory);
            e.Directory = directory;
            e.Host = hostCopy;
            e.Removed = false;
            e.Error = null;
            e.OnDevice = true;
            e.DeviceBytes = deviceBytes;
            e.Pinned |= directory is null && hostCopy is null;
            e.LastUsed = ++_clock;
            EnforceDeviceBudget(e);
            EnforceHostBudget(e);
        }
    }

    /// <summary>Pins (never evicted from the device once loaded) or unpins an adapter. False when unknown.</summary>
    public bool SetPinned(string id, bool pinned)
    {
        lock (_lock)
        {
            if (!_entries.TryGetValue(id, out var e) || e.Removed) return false;
            e.Pinned = pinned || (e.Directory is null && e.Host is null);
            return true;
        }
    }

    /// <summary>
    /// Forgets an adapter: new requests no longer find it; rows already on it finish first, then it leaves the device.
    /// Model thread (the device copy may be dropped here). False when it was not registered.
    /// </summary>
    internal bool Unregister(string id)
    {
        lock (_lock)
        {
            if (!_entries.TryGetValue(id, out var e) || e.Removed) return false;
            e.Removed = true;
            if (e.Refs == 0) Drop(e);
            return true;
        }
    }

    public bool IsRegistered(string id) { lock (_lock) return _entries.TryGetValue(id, out var e) && !e.Removed; }

    public IReadOnlyList<AdapterResidencyInfo> List()
    {
        lock (_lock)
            return _entries.Values.Where(e => !e.Removed).OrderBy(e => e.Id, StringComparer.Ordinal)
                .Select(e => new AdapterResidencyInfo(e.Id, e.Tier, e.Pinned, e.Refs, e.DeviceBytes, e.HostBytes, e.Error)).ToList();
    }

    public ResidencyStats Stats
    {
        get { lock (_lock) return new ResidencyStats(_loads, _deviceEvictions, _hostEvictions, _loadSeconds.ToList(), _copySeconds.ToList()); }
    }

    public int DeviceCount { get { lock (_lock) return _entries.Values.Count(e => e.OnDevice); } }

    // ---- IAdapterGate (model thread) ----

    public AdapterReadiness Prepare(string adapterId, out string? error)
    {
        error = null;
        lock (_lock)
        {
            if (!_entries.TryGetValue(adapterId, out var e) || e.Removed)
            {
                error = $"adapter '{adapterId}' is not loaded";
                return AdapterReadiness.Missing;
            }
            e.LastUsed = ++_clock;
            if (e.OnDevice) return AdapterReadiness.Ready;
            if (e.Error is not null)
            {
                error = $"adapter '{adapterId}' failed to load: {e.Error}";
                return AdapterReadiness.Missing;
            }
            e.WaitingSince ??= Stopwatch.GetTimestamp();
            if (e.Host is null)
            {
                StartRead(e);
                return AdapterReadiness.Loading;
            }
            if (!MakeRoomFor(e)) return AdapterReadiness.Loading;
            long copyStart = Stopwatch.GetTimestamp();
            try
            {
                var info = _backend!.AddAdapter(e.Id, e.Host);
                e.OnDevice = true;
                e.DeviceBytes = info.Bytes;
            }
            catch (Exception ex)
            {
                e.Error = ex.Message;
                error = $"adapter '{adapterId}' failed to load: {ex.Message}";
                return AdapterReadiness.Missing;
            }
            _loads++;
            _loadSeconds.Enqueue(Stopwatch.GetElapsedTime(e.WaitingSince.Value).TotalSeconds);
            _copySeconds.Enqueue(Stopwatch.GetElapsedTime(copyStart).TotalSeconds);
            while (_loadSeconds.Count > MaxLatencySamples) _loadSeconds.Dequeue();
            while (_copySeconds.Count > MaxLatencySamples) _copySeconds.Dequeue();
            e.WaitingSince = null;
            EnforceDeviceBudget(e);
            return AdapterReadiness.Ready;
        }
    }

    public void Acquire(string adapterId)
    {
        lock (_lock)
            if (_entries.TryGetValue(adapterId, out var e)) e.Refs++;
    }

    public void Release(string adapterId)
    {
        lock (_lock)
        {
            if (!_entries.TryGetValue(adapterId, out var e)) return;
            e.Refs = Math.Max(0, e.Refs - 1);
            if (e.Refs == 0 && e.Removed) Drop(e);
        }
    }

    // ---- tiers (under _lock) ----

    /// <summary>Reads the directory on the thread pool; the result is installed on the model thread (which wakes it).</summary>
    private void StartRead(Entry e)
    {
        if (e.Reading || _reads >= Options.MaxConcurrentReads || e.Directory is null) return;
        e.Reading = true;
        _reads++;
        var backend = _backend!;
        var scheduler = _scheduler!();
        string directory = e.Directory;
        _ = Task.Run(() =>
        {
            AdapterDefinition? definition = null;
            string? error = null;
            try { definition = backend.ReadAdapter(directory); }
            catch (Exception ex) { error = ex.Message; }
            scheduler.RunOnModelThread(_ => Installed(e, definition, error)).ContinueWith(t =>
            {
                if (t.IsFaulted) definition?.Dispose(); // shutting down
            }, TaskScheduler.Default);
        });
    }

    private void Installed(Entry e, AdapterDefinition? definition, string? error)
    {
        lock (_lock)
        {
            _reads--;
            e.Reading = false;
            if (e.Removed || !ReferenceEquals(_entries.GetValueOrDefault(e.Id), e)) { definition?.Dispose(); return; }
            if (error is not null) { e.Error = error; return; }
            e.Host = definition;
            e.LastUsed = ++_clock;
            EnforceHostBudget(e);
        }
    }

    /// <summary>Evicts least recently used idle adapters until <paramref name="e"/> fits the device budget; false if it cannot yet.</summary>
    private bool MakeRoomFor(Entry e)
    {
        long estimate = e.DeviceBytes > 0 ? e.DeviceBytes : e.HostBytes;
        while (true)
        {
            var resident = _entries.Values.Where(x => x.OnDevice).ToList();
            bool countOk = Options.MaxDeviceAdapters is not { } max || resident.Count < max;
            bool bytesOk = Options.MaxDeviceBytes is not { } maxBytes || resident.Count == 0 || resident.Sum(x => x.DeviceBytes) + estimate <= maxBytes;
            if (countOk && bytesOk) return true;
            var victim = DeviceVictim(e);
            if (victim is null) return false;
            EvictFromDevice(victim);
        }
    }

    /// <summary>After a load: over the byte budget (sizes are exact only now), idle adapters leave until it fits.</summary>
    private void EnforceDeviceBudget(Entry keep)
    {
        while (true)
        {
            var resident = _entries.Values.Where(x => x.OnDevice).ToList();
            bool over = (Options.MaxDeviceAdapters is { } max && resident.Count > max)
                || (Options.MaxDeviceBytes is { } maxBytes && resident.Sum(x => x.DeviceBytes) > maxBytes);
            if (!over || DeviceVictim(keep) is not { } victim) return;
            EvictFromDevice(victim);
        }
    }

    private Entry? DeviceVictim(Entry keep) =>
        _entries.Values.Where(x => x.OnDevice && x.Refs == 0 && !x.Pinned && !ReferenceEquals(x, keep) && (x.Host is not null || x.Directory is not null))
            .MinBy(x => x.LastUsed);

    private void EvictFromDevice(Entry e)
    {
        _backend!.RemoveAdapter(e.Id);
        e.OnDevice = false;
        _deviceEvictions++;
    }

    private void EnforceHostBudget(Entry? keep)
    {
        if (Options.MaxHostBytes is not { } max) return;
        while (_entries.Values.Sum(x => x.HostBytes) > max)
        {
            // host copies that the disk can give back, least recently used first
            var victim = _entries.Values.Where(x => x.Host is not null && x.Directory is not null && !ReferenceEquals(x, keep)).MinBy(x => x.LastUsed);
            if (victim is null) return;
            DropHost(victim);
            _hostEvictions++;
        }
    }

    private void Drop(Entry e)
    {
        if (e.OnDevice)
        {
            try { _backend?.RemoveAdapter(e.Id); } catch (Exception) { /* gone with the backend */ }
            e.OnDevice = false;
        }
        DropHost(e);
        _entries.Remove(e.Id);
    }

    private static void DropHost(Entry e)
    {
        e.Host?.Dispose();
        e.Host = null;
    }

    public void Dispose()
    {
        lock (_lock)
        {
            foreach (var e in _entries.Values) DropHost(e);
            _entries.Clear();
        }
    }

    private sealed class Entry(string id, string? directory)
    {
        public string Id { get; } = id;
        public string? Directory { get; set; } = directory;
        public AdapterDefinition? Host { get; set; }
        public bool OnDevice { get; set; }
        public long DeviceBytes { get; set; }
        public long HostBytes => Host is null ? 0 : Host.ParameterCount * sizeof(float);
        public int Refs { get; set; }
        public bool Pinned { get; set; }
        public bool Removed { get; set; }
        public bool Reading { get; set; }
        public string? Error { get; set; }
        public long LastUsed { get; set; }
        public long? WaitingSince { get; set; }
        public AdapterTier Tier => OnDevice ? AdapterTier.Device : Host is not null ? AdapterTier.Host : AdapterTier.Disk;
    }
}
