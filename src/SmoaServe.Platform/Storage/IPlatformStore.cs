using SmoaServe.Platform.Adapters;
using SmoaServe.Platform.Tenants;

namespace SmoaServe.Platform.Storage;

/// <summary>
/// The persistent side of the platform: tenants, their API key hashes and quotas, and the adapters that were uploaded
/// (or registered by path). <see cref="SqlitePlatformStore"/> is the embedded implementation; a server-grade one
/// (several replicas over one database) implements the same interface.
/// </summary>
public interface IPlatformStore : IDisposable
{
    /// <summary>Creates a tenant with one key (its hash). Throws <see cref="TenantExistsException"/> for a taken name.</summary>
    Tenant CreateTenant(string name, TenantQuota quota, byte[] keyHash);
    IReadOnlyList<Tenant> ListTenants();
    Tenant? GetTenant(string id);
    Tenant? FindTenantByName(string name);
    /// <summary>The tenant a key hash belongs to; null for an unknown (or revoked) key.</summary>
    Tenant? FindTenantByKeyHash(byte[] keyHash);
    /// <summary>Replaces every key of the tenant by this one (the old keys stop working). False for an unknown tenant.</summary>
    bool ReplaceKeys(string tenantId, byte[] keyHash);
    bool SetQuota(string tenantId, TenantQuota quota);
    /// <summary>Deletes the tenant, its keys and its adapter rows (their files are the caller's). False when unknown.</summary>
    bool DeleteTenant(string tenantId);

    /// <summary>Persistent adapters of one namespace (owner "" = the admin namespace), or of all when null.</summary>
    IReadOnlyList<AdapterRecord> ListAdapters(string? owner = null);
    /// <summary>Adds an adapter row; false when (owner, name) is taken.</summary>
    bool TryAddAdapter(AdapterRecord record);
    bool RemoveAdapter(string owner, string name);
    /// <summary>Marks a stored adapter pinned (kept on the device once loaded) or not; false when unknown.</summary>
    bool SetPinned(string owner, string name, bool pinned);
    /// <summary>Count and total bytes of one namespace's persistent adapters (quota checks).</summary>
    (int Count, long Bytes) Usage(string owner);
}
