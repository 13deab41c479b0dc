using SmoaServe.Engine.Hosting;

namespace SmoaServe.Platform.Adapters;

/// <summary>A requested model that is neither the base nor a registered adapter.</summary>
public sealed class UnknownModelException(string model) : Exception($"The model '{model}' does not exist.")
{
    public string Model { get; } = model;
}

/// <summary>
/// Registers adapters: the name rule, the catalog entry, and residency on the engine, in that order, so that a name is
/// listed only once the engine can serve it. Resolves a request's model to what the engine runs.
/// </summary>
public sealed class AdapterService(IAdapterCatalog catalog, EngineHost engine, string baseModelId)
{
    public string BaseModelId { get; } = baseModelId;
    public IAdapterCatalog Catalog { get; } = catalog;

    /// <summary>Validates, loads and lists the adapter; replaces one of the same name (the old one serves until then).</summary>
    public async Task<AdapterRecord> RegisterAsync(string name, AdapterSource source, AdapterOrigin origin)
    {
        AdapterName.Validate(name, BaseModelId);
        string? directory = null;
        if (source is AdapterSource.Directory d)
        {
            directory = Path.GetFullPath(d.Path);
            if (!System.IO.Directory.Exists(directory)) throw new DirectoryNotFoundException($"adapter '{name}': directory {directory} does not exist");
            source = AdapterSource.FromDirectory(directory);
        }
        var info = await engine.AddAdapterAsync(name, source);
        var record = new AdapterRecord(name, name, origin, directory, DateTimeOffset.UtcNow, AdapterDetails.From(info));
        catalog.Put(record);
        return record;
    }

    /// <summary>Unlists the adapter, then drops it from the engine. False when there was no such adapter.</summary>
    public async Task<bool> RemoveAsync(string name)
    {
        if (!catalog.TryGet(name, out var record) || !catalog.Remove(name)) return false;
        await engine.RemoveAdapterAsync(record.EngineId);
        return true;
    }

    /// <summary>The engine adapter id for a request's model: null for the base model (or no model given).</summary>
    /// <exception cref="UnknownModelException">neither the base nor a registered adapter</exception>
    public string? Resolve(string? model)
    {
        if (model is null || model == BaseModelId) return null;
        return catalog.TryGet(model, out var record) ? record.EngineId : throw new UnknownModelException(model);
    }

    /// <summary>True while <paramref name="engineId"/> is still listed (a request whose adapter vanished is a 404, not a 500).</summary>
    public bool IsListed(string engineId) => catalog.List().Any(r => r.EngineId == engineId);
}
