using Microsoft.Extensions.Options;
using SmoaServe.Engine.Hosting;
using SmoaServe.Platform.Adapters;

namespace SmoaServe.Server;

/// <summary>
/// Serves every sub-directory of the adapters directory under its name. Polls; a new or changed directory is
/// (re)loaded once its file list, sizes and times stayed the same over one poll interval (debounce for copies in
/// progress); a vanished directory is unloaded. A directory that fails to load is retried only after it changes.
/// Names given with --adapter take precedence; directories whose names break <see cref="AdapterName"/> are skipped.
/// </summary>
public sealed class AdapterDirectoryWatcher(AdapterService adapters, ServerStatus status, IOptions<ServerOptions> options,
    ILogger<AdapterDirectoryWatcher> logger)
    : BackgroundService
{
    private readonly Dictionary<string, string> _seen = new();    // name → fingerprint at the last poll
    private readonly Dictionary<string, string> _applied = new(); // name → fingerprint loaded (or failed)

    private readonly SemaphoreSlim _pollLock = new(1, 1);

    public string Directory { get; } = Path.GetFullPath(options.Value.AdaptersDir);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        try { await status.Loaded.WaitAsync(stoppingToken); }
        catch (Exception) { return; }
        var interval = TimeSpan.FromSeconds(Math.Max(0.05, options.Value.AdaptersPollSeconds));
        logger.LogInformation("Watching {Directory} for adapters every {Seconds}s", Directory, interval.TotalSeconds);
        while (!stoppingToken.IsCancellationRequested)
        {
            try { await PollAsync(); }
            catch (Exception e) when (e is not OperationCanceledException) { logger.LogError(e, "Scanning {Directory} failed", Directory); }
            try { await Task.Delay(interval, stoppingToken); }
            catch (OperationCanceledException) { return; }
        }
    }

    /// <summary>One scan: load what is new and stable, unload what vanished.</summary>
    public async Task PollAsync()
    {
        await _pollLock.WaitAsync();
        try { await PollOnceAsync(); }
        finally { _pollLock.Release(); }
    }

    private async Task PollOnceAsync()
    {
        var current = Scan();
        foreach (var (name, fingerprint) in current)
        {
            bool stable = _seen.TryGetValue(name, out var before) && before == fingerprint;
            bool applied = _applied.TryGetValue(name, out var done) && done == fingerprint;
            if (stable && !applied) await LoadAsync(name, fingerprint);
        }
        foreach (var name in _applied.Keys.Where(n => !current.ContainsKey(n)).ToList())
        {
            _applied.Remove(name);
            if (adapters.Catalog.TryGet(name, out var entry) && entry.Origin == AdapterOrigin.Directory)
            {
                await adapters.RemoveAsync(name);
                logger.LogInformation("Adapter {Adapter} removed (its directory is gone)", name);
            }
        }
        _seen.Clear();
        foreach (var kv in current) _seen[kv.Key] = kv.Value;
    }

    private async Task LoadAsync(string name, string fingerprint)
    {
        _applied[name] = fingerprint;
        if (!AdapterName.IsValid(name) || name == adapters.BaseModelId)
        {
            logger.LogWarning("Adapter directory {Adapter} ignored: {Reason}", name, name == adapters.BaseModelId ? "that is the base model's id"
                : $"adapter names are 1-{AdapterName.MaxLength} characters of letters, digits, '.', '_' or '-'");
            return;
        }
        if (adapters.Catalog.TryGet(name, out var existing) && existing.Origin != AdapterOrigin.Directory)
        {
            logger.LogWarning("Adapter directory {Adapter} ignored: that name was given with --adapter", name);
            return;
        }
        try
        {
            await adapters.RegisterAsync(name, AdapterSource.FromDirectory(Path.Combine(Directory, name)), AdapterOrigin.Directory);
            logger.LogInformation("Adapter {Adapter} loaded from {Directory}", name, Path.Combine(Directory, name));
        }
        catch (Exception e)
        {
            logger.LogError("Adapter {Adapter} in {Directory} failed to load: {Message}", name, Directory, e.Message);
            if (adapters.Catalog.TryGet(name, out var stale) && stale.Origin == AdapterOrigin.Directory) await adapters.RemoveAsync(name);
        }
    }

    /// <summary>Sub-directory name → fingerprint of its files (names, sizes, write times); hidden ones skipped.</summary>
    private Dictionary<string, string> Scan()
    {
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        var root = new DirectoryInfo(Directory);
        if (!root.Exists) return result;
        foreach (var dir in root.EnumerateDirectories())
        {
            if (dir.Name.StartsWith('.')) continue;
            try
            {
                var parts = dir.EnumerateFiles("*", SearchOption.TopDirectoryOnly)
                    .OrderBy(f => f.Name, StringComparer.Ordinal)
                    .Select(f => $"{f.Name}:{f.Length}:{f.LastWriteTimeUtc.Ticks}");
                result[dir.Name] = string.Join("|", parts);
            }
            // unreadable mid-scan: keep what we knew (a transient error must not unload a serving adapter)
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                if (dir.Exists && _seen.TryGetValue(dir.Name, out var previous)) result[dir.Name] = previous;
            }
        }
        return result;
    }
}
