using SmoaServe.Platform.Adapters;
using SmoaServe.Platform.Storage;

namespace SmoaServe.Platform.Tenants;

/// <summary>Tenants and their keys: creation (the key is returned once), rotation, quotas, deletion with every adapter.</summary>
public sealed class TenantService(IPlatformStore store, AdapterService adapters)
{
    public IPlatformStore Store { get; } = store;

    /// <summary>Creates a tenant; its name follows the adapter name rule. Throws <see cref="TenantExistsException"/> for a taken name.</summary>
    public TenantWithKey Create(string name, TenantQuota? quota = null)
    {
        AdapterName.Validate(name);
        quota ??= TenantQuota.None;
        if (quota.Problems() is { Count: > 0 } problems) throw new ArgumentException(string.Join("; ", problems));
        string key = ApiKeys.Generate();
        return new TenantWithKey(Store.CreateTenant(name, quota, ApiKeys.Hash(key)), key);
    }

    public IReadOnlyList<Tenant> List() => Store.ListTenants();
    public Tenant? Get(string id) => Store.GetTenant(id);

    /// <summary>The tenant a key belongs to (null for unknown, revoked or rotated-away keys).</summary>
    public Tenant? Authenticate(string key)
    {
        if (!key.StartsWith(ApiKeys.Prefix, StringComparison.Ordinal) || key.Length > 256) return null;
        return Store.FindTenantByKeyHash(ApiKeys.Hash(key));
    }

    /// <summary>A new key for the tenant; every older key stops working. Null for an unknown tenant.</summary>
    public string? RotateKey(string id)
    {
        string key = ApiKeys.Generate();
        return Store.ReplaceKeys(id, ApiKeys.Hash(key)) ? key : null;
    }

    public bool SetQuota(string id, TenantQuota quota)
    {
        if (quota.Problems() is { Count: > 0 } problems) throw new ArgumentException(string.Join("; ", problems));
        return Store.SetQuota(id, quota);
    }

    /// <summary>Revokes the tenant's keys, deletes it and its adapter rows, then unloads its adapters and deletes their files.</summary>
    public async Task<bool> DeleteAsync(string id)
    {
        if (!Store.DeleteTenant(id)) return false;
        await adapters.RemoveOwnerAsync(id);
        return true;
    }
}
