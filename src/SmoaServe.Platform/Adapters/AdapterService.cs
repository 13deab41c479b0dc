using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Hosting;
using SmoaServe.Platform.Storage;
using SmoaServe.Platform.Tenants;

namespace SmoaServe.Platform.Adapters;

/// <summary>A requested model that is neither the base nor an adapter the caller may use (the same answer either way).</summary>
public sealed class UnknownModelException(string model) : Exception($"The model '{model}' does not exist.")
{
    public string Model { get; } = model;
}

/// <summary>The namespace already has an adapter of that name.</summary>
public sealed class AdapterExistsException(string name) : Exception($"an adapter named '{name}' already exists")
{
    public string Name { get; } = name;
}

/// <summary>The uploaded files are not an adapter this base can serve; the message names the problem (no server paths).</summary>
public sealed class InvalidAdapterException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>A tenant quota would be exceeded; <see cref="Limit"/> names it (max_adapters, max_bytes).</summary>
public sealed class QuotaExceededException(string limit, string message) : Exception(message)
{
    public string Limit { get; } = limit;
}

/// <summary>Whose adapters a caller sees: one tenant's, or (the admin) its own namespace plus every tenant's as "tenant/name".</summary>
public sealed record AdapterScope(string Owner, bool IsAdmin)
{
    public static AdapterScope Admin { get; } = new(AdapterNamespaces.Admin, true);
    public static AdapterScope ForTenant(string tenantId) => new(tenantId, false);
}

/// <summary>An adapter as one caller addresses it (tenant adapters are "tenant/name" for the admin).</summary>
public sealed record VisibleAdapter(string Id, AdapterRecord Record);

/// <summary>
/// Registers adapters: the name rule, the catalog entry, and residency on the engine, in that order, so that a name is
/// listed only once the engine can serve it. Uploads are validated by the engine's reader in a staging folder before
/// anything is stored. Resolves a request's model in the caller's namespace to what the engine runs.
/// </summary>
public sealed class AdapterService(IAdapterCatalog catalog, EngineHost engine, string baseModelId, AdapterFileStore? files = null, IPlatformStore? store = null)
{
    private readonly SemaphoreSlim _mutations = new(1, 1);

    public string BaseModelId { get; } = baseModelId;
    public IAdapterCatalog Catalog { get; } = catalog;
    public AdapterFileStore? Files { get; } = files;
    public IPlatformStore? Store { get; } = store;

    /// <summary>Validates, loads and lists an adapter of the admin namespace; replaces one of the same name (the old one serves until then).</summary>
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
        if (Catalog.TryGet(name, out var existing) && existing.IsPersistent) throw new AdapterExistsException(name);
        var info = await engine.AddAdapterAsync(name, source);
        var record = new AdapterRecord(name, name, origin, directory, DateTimeOffset.UtcNow, AdapterDetails.From(info));
        Catalog.Put(record);
        return record;
    }

    /// <summary>
    /// Stores an uploaded adapter from <paramref name="staging"/> (a folder from <see cref="AdapterFileStore.CreateStaging"/>,
    /// consumed): validated against the base, checked against the quota, renamed into place, added to the catalog, and
    /// registered with the engine to load on first use. On any failure nothing is stored or listed.
    /// </summary>
    public async Task<AdapterRecord> UploadAsync(string owner, string name, string staging, TenantQuota? quota = null)
    {
        var fileStore = Files ?? throw new InvalidOperationException("no adapter store");
        try
        {
            AdapterName.Validate(name, BaseModelId);
            if (Catalog.TryGet(owner, name, out _)) throw new AdapterExistsException(name);
            AdapterDefinition? definition;
            try { definition = await engine.ReadAdapterAsync(staging); }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                // everything the engine's reader refuses is the upload's fault; paths of the staging folder stay private
                string message = e.Message.Replace(staging + Path.DirectorySeparatorChar, "").Replace(staging, "the upload");
                throw new InvalidAdapterException(message, e);
            }
            try
            {
                long bytes = System.IO.Directory.EnumerateFiles(staging).Sum(f => new FileInfo(f).Length);
                var details = DetailsOf(definition, bytes);
                await _mutations.WaitAsync();
                try
                {
                    if (Catalog.TryGet(owner, name, out _)) throw new AdapterExistsException(name);
                    CheckQuota(owner, bytes, quota);
                    string directory = fileStore.Commit(staging, owner, name);
                    var record = new AdapterRecord(name, NewEngineId(owner, name), AdapterOrigin.Uploaded, directory, Now(), details, owner);
                    if (!Catalog.TryAdd(record))
                    {
                        fileStore.Delete(directory);
                        throw new AdapterExistsException(name);
                    }
                    await engine.RegisterAdapterAsync(record.EngineId, directory, definition);
                    definition = null; // the engine's host tier owns it now
                    return record;
                }
                finally { _mutations.Release(); }
            }
            finally { definition?.Dispose(); }
        }
        finally { fileStore.DeleteStaging(staging); }
    }

    /// <summary>Registers an adapter folder by path in the admin namespace (kept in the store, files left where they are).</summary>
    public async Task<AdapterRecord> RegisterPathAsync(string name, string path)
    {
        AdapterName.Validate(name, BaseModelId);
        string directory = Path.GetFullPath(path);
        if (!System.IO.Directory.Exists(directory)) throw new DirectoryNotFoundException($"adapter directory {path} does not exist");
        if (Catalog.TryGet(name, out _)) throw new AdapterExistsException(name);
        var definition = await engine.ReadAdapterAsync(directory);
        try
        {
            long bytes = System.IO.Directory.EnumerateFiles(directory).Sum(f => new FileInfo(f).Length);
            var record = new AdapterRecord(name, NewEngineId(AdapterNamespaces.Admin, name), AdapterOrigin.Path, directory, Now(), DetailsOf(definition, bytes));
            await _mutations.WaitAsync();
            try
            {
                if (!Catalog.TryAdd(record)) throw new AdapterExistsException(name);
                await engine.RegisterAdapterAsync(record.EngineId, directory, definition);
                definition = null;
                return record;
            }
            finally { _mutations.Release(); }
        }
        finally { definition?.Dispose(); }
    }

    /// <summary>Unlists the adapter, then drops it from the engine (running rows finish) and deletes its stored files.</summary>
    public async Task<bool> RemoveAsync(string owner, string name)
    {
        AdapterRecord record;
        await _mutations.WaitAsync();
        try
        {
            if (!Catalog.TryGet(owner, name, out record) || !Catalog.Remove(owner, name)) return false;
        }
        finally { _mutations.Release(); }
        await engine.RemoveAdapterAsync(record.EngineId);
        if (record.Origin == AdapterOrigin.Uploaded && record.Directory is not null) Files?.Delete(record.Directory);
        return true;
    }

    /// <summary>An adapter of the admin namespace.</summary>
    public Task<bool> RemoveAsync(string name) => RemoveAsync(AdapterNamespaces.Admin, name);

    /// <summary>Pins an adapter (kept on the device once loaded, never evicted) or unpins it; remembered across restarts for stored ones.</summary>
    public bool SetPinned(AdapterRecord record, bool pinned) =>
        Catalog.SetPinned(record.Owner, record.Name, pinned) && engine.Residency.SetPinned(record.EngineId, pinned);

    /// <summary>Unlists and unloads every adapter of a tenant and deletes its files (its store rows go with the tenant).</summary>
    public async Task RemoveOwnerAsync(string owner)
    {
        List<AdapterRecord> records;
        await _mutations.WaitAsync();
        try
        {
            records = Catalog.List(owner).ToList();
            Catalog.Forget(owner);
        }
        finally { _mutations.Release(); }
        foreach (var r in records) await engine.RemoveAdapterAsync(r.EngineId);
        Files?.DeleteOwner(owner);
    }

    /// <summary>
    /// At start: every stored adapter whose files are there is registered with the engine (loaded on first use); rows whose
    /// folder vanished are dropped, and folders no row names (a crash mid-upload) are deleted. Returns what was restored.
    /// </summary>
    public async Task<IReadOnlyList<AdapterRecord>> RestoreAsync()
    {
        var restored = new List<AdapterRecord>();
        foreach (var record in Catalog.List().Where(r => r.IsPersistent))
        {
            if (record.Directory is null || !System.IO.Directory.Exists(record.Directory))
            {
                Catalog.Remove(record.Owner, record.Name);
                continue;
            }
            await engine.RegisterAdapterAsync(record.EngineId, record.Directory, pinned: record.Pinned);
            restored.Add(record);
        }
        Files?.Reconcile(Catalog.List().Where(r => r.Origin == AdapterOrigin.Uploaded && r.Directory is not null).Select(r => r.Directory!));
        return restored;
    }

    /// <summary>The engine adapter id for a request's model in the admin namespace: null for the base model (or no model given).</summary>
    /// <exception cref="UnknownModelException">neither the base nor a registered adapter</exception>
    public string? Resolve(string? model) => Resolve(AdapterScope.Admin, model);

    /// <summary>
    /// The engine adapter id for a request's model as <paramref name="scope"/> sees it: null for the base. A tenant sees its
    /// own adapters only; the admin its namespace and every tenant's adapter as "tenant/name".
    /// </summary>
    /// <exception cref="UnknownModelException">not the base and not an adapter the caller may use</exception>
    public string? Resolve(AdapterScope scope, string? model)
    {
        if (model is null || model == BaseModelId) return null;
        return Find(scope, model)?.EngineId ?? throw new UnknownModelException(model);
    }

    /// <summary>The adapter <paramref name="model"/> names in the caller's view, or null.</summary>
    public AdapterRecord? Find(AdapterScope scope, string model)
    {
        if (Catalog.TryGet(scope.Owner, model, out var own)) return own;
        if (!scope.IsAdmin || Store is null) return null;
        int slash = model.IndexOf('/');
        if (slash <= 0) return null;
        string tenantName = model[..slash], name = model[(slash + 1)..];
        var tenant = Store.FindTenantByName(tenantName) ?? Store.GetTenant(tenantName);
        return tenant is not null && Catalog.TryGet(tenant.Id, name, out var record) ? record : null;
    }

    /// <summary>The adapters a caller sees, under the ids it uses for them.</summary>
    public IReadOnlyList<VisibleAdapter> Visible(AdapterScope scope)
    {
        if (!scope.IsAdmin) return Catalog.List(scope.Owner).Select(r => new VisibleAdapter(r.Name, r)).ToList();
        var names = Store?.ListTenants().ToDictionary(t => t.Id, t => t.Name) ?? new Dictionary<string, string>();
        return Catalog.List()
            .Select(r => new VisibleAdapter(r.Owner == scope.Owner ? r.Name : $"{names.GetValueOrDefault(r.Owner, r.Owner)}/{r.Name}", r))
            .OrderBy(v => v.Id, StringComparer.Ordinal).ToList();
    }

    /// <summary>True while <paramref name="engineId"/> is still listed (a request whose adapter vanished is a 404, not a 500).</summary>
    public bool IsListed(string engineId) => Catalog.ContainsEngineId(engineId);

    private void CheckQuota(string owner, long bytes, TenantQuota? quota)
    {
        if (quota is null || (quota.MaxAdapters is null && quota.MaxBytes is null)) return;
        var mine = Catalog.List(owner).Where(r => r.IsPersistent).ToList();
        if (quota.MaxAdapters is { } maxCount && mine.Count + 1 > maxCount)
            throw new QuotaExceededException("max_adapters", $"this tenant may store at most {maxCount} adapters (quota max_adapters)");
        long used = mine.Sum(r => r.Details.Bytes);
        if (quota.MaxBytes is { } maxBytes && used + bytes > maxBytes)
            throw new QuotaExceededException("max_bytes", $"this upload ({bytes} bytes) would bring the tenant to {used + bytes} bytes; its quota max_bytes is {maxBytes}");
    }

    private static AdapterDetails DetailsOf(AdapterDefinition d, long bytes)
    {
        var c = d.Config;
        return new AdapterDetails(c.Kind == AdapterKind.Smoa ? "smoa" : "lora", c.R, c.Kind == AdapterKind.Smoa ? c.NumBlocks : null,
            c.TargetModules.Select(Engine.Model.ProjectionNames.ModuleName).ToList(), bytes, d.ParameterCount);
    }

    /// <summary>A fresh engine id per stored adapter: a name deleted and uploaded again never meets rows of its old version.</summary>
    private static string NewEngineId(string owner, string name) =>
        $"{(owner.Length == 0 ? AdapterFileStore.AdminFolder : owner)}/{name}@{Guid.NewGuid().ToString("N")[..8]}";

    private static DateTimeOffset Now() => DateTimeOffset.FromUnixTimeSeconds(DateTimeOffset.UtcNow.ToUnixTimeSeconds());
}
