using System.Collections.Concurrent;
using SmoaServe.Engine.Adapters;

namespace SmoaServe.Platform.Adapters;

/// <summary>How an adapter entered the catalog.</summary>
public enum AdapterOrigin
{
    /// <summary>Named on the command line or in configuration (--adapter NAME=DIR).</summary>
    Preloaded,
    /// <summary>A sub-directory of the watched adapters directory.</summary>
    Directory,
    /// <summary>Created in memory by the host itself (synthetic benchmark adapters).</summary>
    BuiltIn,
    /// <summary>Uploaded through the API; its files live under the data directory and its row in the store.</summary>
    Uploaded,
    /// <summary>Registered by path through the vLLM-compatible load endpoint; its row lives in the store.</summary>
    Path,
}

/// <summary>What an adapter is, as the API reports it (from its validated config; no tensors).</summary>
public sealed record AdapterDetails(string Type, int R, int? NumBlocks, IReadOnlyList<string> TargetModules, long Bytes, long Parameters)
{
    public static AdapterDetails From(AdapterInfo info) =>
        new(info.Kind == AdapterKind.Smoa ? "smoa" : "lora", info.R, info.Kind == AdapterKind.Smoa ? info.NumBlocks : null,
            info.TargetModules, info.Bytes, info.ParameterCount);
}

/// <summary>
/// One registered adapter. <paramref name="Name"/> is what requests of its namespace use as their model;
/// <paramref name="EngineId"/> is the key the engine keeps it under; <paramref name="Owner"/> is the namespace: a tenant
/// id, or "" for the admin namespace (adapters from the command line, the adapters directory and the admin's uploads).
/// </summary>
public sealed record AdapterRecord(string Name, string EngineId, AdapterOrigin Origin, string? Directory, DateTimeOffset CreatedAt, AdapterDetails Details,
    string Owner = "", bool Pinned = false)
{
    /// <summary>Kept in the platform store (survives restarts) rather than re-created from configuration at each start.</summary>
    public bool IsPersistent => Origin is AdapterOrigin.Uploaded or AdapterOrigin.Path;
}

/// <summary>The namespace of the admin: adapters from the command line, the adapters directory, and the admin's own uploads.</summary>
public static class AdapterNamespaces
{
    public const string Admin = "";

    /// <summary>The engine id of an adapter: its name in the admin namespace, "tenant-id/name" in a tenant's.</summary>
    public static string EngineId(string owner, string name) => owner.Length == 0 ? name : owner + "/" + name;
}

/// <summary>The single owner of adapter identity: which names exist in which namespace and what each refers to.</summary>
public interface IAdapterCatalog
{
    /// <summary>Every adapter of every namespace.</summary>
    IReadOnlyList<AdapterRecord> List();
    /// <summary>The adapters of one namespace ("" = admin).</summary>
    IReadOnlyList<AdapterRecord> List(string owner) => List().Where(r => r.Owner == owner).ToList();
    bool TryGet(string owner, string name, out AdapterRecord record);
    /// <summary>An adapter of the admin namespace.</summary>
    bool TryGet(string name, out AdapterRecord record) => TryGet(AdapterNamespaces.Admin, name, out record);
    /// <summary>Adds the record, or replaces the one of the same namespace and name (adapters that are not persistent).</summary>
    void Put(AdapterRecord record);
    /// <summary>Adds a record unless its namespace already has that name (false then). Persistent records are stored.</summary>
    bool TryAdd(AdapterRecord record);
    bool Remove(string owner, string name);
    bool Remove(string name) => Remove(AdapterNamespaces.Admin, name);
    /// <summary>Drops every record of a namespace from memory (a deleted tenant; its store rows are deleted with it).</summary>
    void Forget(string owner) { }
    bool ContainsEngineId(string engineId) => List().Any(r => r.EngineId == engineId);
    /// <summary>Replaces an existing record's pinned flag (stored for persistent records); false when unknown.</summary>
    bool SetPinned(string owner, string name, bool pinned)
    {
        if (!TryGet(owner, name, out var r)) return false;
        Put(r with { Pinned = pinned });
        return true;
    }
}

/// <summary>A catalog held in memory (adapters come back from their directories and the command line at each start).</summary>
public sealed class InMemoryAdapterCatalog : IAdapterCatalog
{
    private readonly ConcurrentDictionary<(string, string), AdapterRecord> _records = new();

    public IReadOnlyList<AdapterRecord> List() =>
        _records.Values.OrderBy(r => r.Owner, StringComparer.Ordinal).ThenBy(r => r.Name, StringComparer.Ordinal).ToList();
    public bool TryGet(string owner, string name, out AdapterRecord record) => _records.TryGetValue((owner, name), out record!);
    public void Put(AdapterRecord record) => _records[(record.Owner, record.Name)] = record;
    public bool TryAdd(AdapterRecord record) => _records.TryAdd((record.Owner, record.Name), record);
    public bool Remove(string owner, string name) => _records.TryRemove((owner, name), out _);
    public void Forget(string owner)
    {
        foreach (var key in _records.Keys.Where(k => k.Item1 == owner).ToList()) _records.TryRemove(key, out _);
    }
}

/// <summary>
/// The catalog over the platform store: persistent adapters (uploads, registrations by path) are rows of the store,
/// read once at start and written through; the others (command line, adapters directory, built-in) live in memory.
/// Both are listed together; a name is unique within its namespace across the two.
/// </summary>
public sealed class StoredAdapterCatalog : IAdapterCatalog
{
    private readonly Storage.IPlatformStore _store;
    private readonly InMemoryAdapterCatalog _memory = new();
    private readonly object _lock = new();

    public StoredAdapterCatalog(Storage.IPlatformStore store)
    {
        _store = store;
        foreach (var r in store.ListAdapters()) _memory.Put(r);
    }

    public IReadOnlyList<AdapterRecord> List() => _memory.List();
    public bool TryGet(string owner, string name, out AdapterRecord record) => _memory.TryGet(owner, name, out record);

    public void Put(AdapterRecord record)
    {
        if (record.IsPersistent) throw new InvalidOperationException("persistent adapters are added with TryAdd");
        lock (_lock)
        {
            if (_memory.TryGet(record.Owner, record.Name, out var existing) && existing.IsPersistent)
                throw new InvalidOperationException($"adapter '{record.Name}' is a stored adapter");
            _memory.Put(record);
        }
    }

    public bool TryAdd(AdapterRecord record)
    {
        lock (_lock)
        {
            if (_memory.TryGet(record.Owner, record.Name, out _)) return false;
            if (record.IsPersistent && !_store.TryAddAdapter(record)) return false;
            return _memory.TryAdd(record);
        }
    }

    public bool Remove(string owner, string name)
    {
        lock (_lock)
        {
            if (!_memory.TryGet(owner, name, out var record)) return false;
            if (record.IsPersistent) _store.RemoveAdapter(owner, name);
            return _memory.Remove(owner, name);
        }
    }

    public void Forget(string owner)
    {
        lock (_lock) _memory.Forget(owner);
    }

    public bool SetPinned(string owner, string name, bool pinned)
    {
        lock (_lock)
        {
            if (!_memory.TryGet(owner, name, out var r)) return false;
            if (r.IsPersistent && !_store.SetPinned(owner, name, pinned)) return false;
            _memory.Put(r with { Pinned = pinned });
            return true;
        }
    }
}
