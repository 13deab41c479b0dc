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
}

/// <summary>What an adapter is, as the API reports it (from its validated config; no tensors).</summary>
public sealed record AdapterDetails(string Type, int R, int? NumBlocks, IReadOnlyList<string> TargetModules, long Bytes, long Parameters)
{
    public static AdapterDetails From(AdapterInfo info) =>
        new(info.Kind == AdapterKind.Smoa ? "smoa" : "lora", info.R, info.Kind == AdapterKind.Smoa ? info.NumBlocks : null,
            info.TargetModules, info.Bytes, info.ParameterCount);
}

/// <summary>
/// One registered adapter. <paramref name="Name"/> is what requests use as their model; <paramref name="EngineId"/> is the
/// key the engine keeps it resident under.
/// </summary>
public sealed record AdapterRecord(string Name, string EngineId, AdapterOrigin Origin, string? Directory, DateTimeOffset CreatedAt, AdapterDetails Details);

/// <summary>The single owner of adapter identity: which names exist and what each refers to.</summary>
public interface IAdapterCatalog
{
    IReadOnlyList<AdapterRecord> List();
    bool TryGet(string name, out AdapterRecord record);
    /// <summary>Adds the record, or replaces the one of the same name.</summary>
    void Put(AdapterRecord record);
    bool Remove(string name);
}

/// <summary>A catalog held in memory (adapters come back from their directories and the command line at each start).</summary>
public sealed class InMemoryAdapterCatalog : IAdapterCatalog
{
    private readonly ConcurrentDictionary<string, AdapterRecord> _records = new(StringComparer.Ordinal);

    public IReadOnlyList<AdapterRecord> List() => _records.Values.OrderBy(r => r.Name, StringComparer.Ordinal).ToList();
    public bool TryGet(string name, out AdapterRecord record) => _records.TryGetValue(name, out record!);
    public void Put(AdapterRecord record) => _records[record.Name] = record;
    public bool Remove(string name) => _records.TryRemove(name, out _);
}
