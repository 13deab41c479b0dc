using System.Security.Cryptography;
using System.Text;

namespace SmoaServe.Platform.Tenants;

/// <summary>Per-tenant limits; null = unlimited.</summary>
public sealed record TenantQuota(int? MaxAdapters = null, long? MaxBytes = null, int? MaxConcurrentRequests = null)
{
    public static TenantQuota None { get; } = new();

    public IReadOnlyList<string> Problems()
    {
        var p = new List<string>();
        if (MaxAdapters is < 0) p.Add($"max_adapters must be >= 0 (got {MaxAdapters})");
        if (MaxBytes is < 0) p.Add($"max_bytes must be >= 0 (got {MaxBytes})");
        if (MaxConcurrentRequests is < 1) p.Add($"max_concurrent_requests must be >= 1 (got {MaxConcurrentRequests})");
        return p;
    }
}

/// <summary>A customer of the server: its own adapters and API keys. <see cref="Id"/> is stable; <see cref="Name"/> follows the adapter name rule.</summary>
public sealed record Tenant(string Id, string Name, DateTimeOffset CreatedAt, TenantQuota Quota);

/// <summary>A tenant and the one time its new key is shown.</summary>
public sealed record TenantWithKey(Tenant Tenant, string ApiKey);

/// <summary>The tenant name already exists.</summary>
public sealed class TenantExistsException(string name) : Exception($"a tenant named '{name}' already exists")
{
    public string Name { get; } = name;
}

/// <summary>API keys: random, shown once, stored only as a SHA-256 hash; comparisons in constant time.</summary>
public static class ApiKeys
{
    public const string Prefix = "smoa-";

    /// <summary>A new key: the prefix and 32 random bytes (base64url).</summary>
    public static string Generate() => Prefix + Convert.ToBase64String(RandomNumberGenerator.GetBytes(32))
        .TrimEnd('=').Replace('+', '-').Replace('/', '_');

    public static byte[] Hash(string key) => SHA256.HashData(Encoding.UTF8.GetBytes(key));

    public static bool Matches(byte[] storedHash, string key) => CryptographicOperations.FixedTimeEquals(storedHash, Hash(key));

    /// <summary>A new tenant id: "t" and 16 hex digits (never contains '/', so it can prefix engine ids).</summary>
    public static string NewTenantId() => "t" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8));
}
