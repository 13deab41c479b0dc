using System.Security.Cryptography;
using System.Text;
using SmoaServe.Platform.Adapters;
using SmoaServe.Platform.Tenants;

namespace SmoaServe.Server;

/// <summary>Who is calling: an id, whether it may administer the server, and the tenant it is (null for the admin).</summary>
public sealed record ApiCaller(string Id, bool IsAdmin, Tenant? Tenant = null)
{
    /// <summary>The adapters this caller sees and uses.</summary>
    public AdapterScope Scope => Tenant is { } t ? AdapterScope.ForTenant(t.Id) : AdapterScope.Admin;
    /// <summary>The unit of fair sharing and per-tenant metrics: the tenant id, or null for the admin.</summary>
    public string? Owner => Tenant?.Id;
    /// <summary>The label used in per-tenant metrics.</summary>
    public string MetricsLabel => Tenant?.Name ?? "_admin";
}

/// <summary>Maps an API key to its caller.</summary>
public interface IApiKeyValidator
{
    /// <summary>The caller a key belongs to, or null for an unknown key.</summary>
    ApiCaller? Validate(string apiKey);
}

/// <summary>Accepts the admin key only; compares hashes in constant time.</summary>
public sealed class AdminKeyValidator : IApiKeyValidator
{
    private readonly byte[] _adminHash;

    public AdminKeyValidator(string adminKey)
    {
        if (string.IsNullOrEmpty(adminKey)) throw new ArgumentException("the admin key is empty");
        _adminHash = SHA256.HashData(Encoding.UTF8.GetBytes(adminKey));
    }

    public ApiCaller? Validate(string apiKey) =>
        CryptographicOperations.FixedTimeEquals(SHA256.HashData(Encoding.UTF8.GetBytes(apiKey)), _adminHash)
            ? new ApiCaller("admin", IsAdmin: true) : null;
}

/// <summary>The admin key (constant-time hash comparison), else a tenant key looked up by its hash in the platform store.</summary>
public sealed class TenantKeyValidator(AdminKeyValidator admin, TenantService tenants) : IApiKeyValidator
{
    public ApiCaller? Validate(string apiKey) =>
        admin.Validate(apiKey) ?? (tenants.Authenticate(apiKey) is { } tenant ? new ApiCaller(tenant.Id, IsAdmin: false, tenant) : null);
}

/// <summary>--allow-anonymous: every call is the admin.</summary>
public sealed class AnonymousValidator : IApiKeyValidator
{
    public ApiCaller? Validate(string apiKey) => new("anonymous", IsAdmin: true);
}

/// <summary>Endpoint filter: requires "Authorization: Bearer KEY" that the validator accepts (401 otherwise).</summary>
public sealed class ApiKeyFilter(IApiKeyValidator validator) : IEndpointFilter
{
    public const string CallerItem = "smoa.caller";

    public ValueTask<object?> InvokeAsync(EndpointFilterInvocationContext context, EndpointFilterDelegate next)
    {
        var http = context.HttpContext;
        string? key = BearerToken(http.Request.Headers.Authorization.ToString());
        ApiCaller? caller = validator is AnonymousValidator ? new ApiCaller("anonymous", true)
            : key is null ? throw ApiException.Unauthorized("Missing API key: send 'Authorization: Bearer <key>'.")
            : validator.Validate(key) ?? throw ApiException.Unauthorized("Incorrect API key provided.");
        http.Items[CallerItem] = caller;
        return next(context);
    }

    /// <summary>The caller the filter authenticated for this request.</summary>
    public static ApiCaller Caller(HttpContext http) =>
        http.Items[CallerItem] as ApiCaller ?? throw new InvalidOperationException("no authenticated caller");

    private static string? BearerToken(string header)
    {
        const string scheme = "Bearer ";
        if (!header.StartsWith(scheme, StringComparison.OrdinalIgnoreCase)) return null;
        string token = header[scheme.Length..].Trim();
        return token.Length > 0 ? token : null;
    }
}

/// <summary>Endpoint filter after <see cref="ApiKeyFilter"/>: only the admin key passes (403 for a tenant key).</summary>
public sealed class AdminOnlyFilter : IEndpointFilter
{
    public ValueTask<object?> InvokeAsync(EndpointFilterInvocationContext context, EndpointFilterDelegate next) =>
        ApiKeyFilter.Caller(context.HttpContext).IsAdmin ? next(context)
            : throw new ApiException(403, "This route needs the admin key.", "permission_error", null, "forbidden");
}
