using System.Security.Cryptography;
using System.Text;

namespace SmoaServe.Server;

/// <summary>Who is calling: an id and whether it may administer the server.</summary>
public sealed record ApiCaller(string Id, bool IsAdmin);

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

    private static string? BearerToken(string header)
    {
        const string scheme = "Bearer ";
        if (!header.StartsWith(scheme, StringComparison.OrdinalIgnoreCase)) return null;
        string token = header[scheme.Length..].Trim();
        return token.Length > 0 ? token : null;
    }
}
