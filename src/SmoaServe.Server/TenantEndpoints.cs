using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.Extensions.Options;
using SmoaServe.Engine.Hosting;
using SmoaServe.Platform.Adapters;
using SmoaServe.Platform.Tenants;

namespace SmoaServe.Server;

public sealed record QuotaDto(int? MaxAdapters, long? MaxBytes, int? MaxConcurrentRequests);

public sealed record TenantDto(string Id, string Name, long CreatedAt, QuotaDto Quota,
    [property: JsonPropertyName("api_key")] string? ApiKey = null)
{
    public string Object => "tenant";
    public static TenantDto From(Tenant t, string? key = null) =>
        new(t.Id, t.Name, t.CreatedAt.ToUnixTimeSeconds(), new QuotaDto(t.Quota.MaxAdapters, t.Quota.MaxBytes, t.Quota.MaxConcurrentRequests), key);
}

public sealed record TenantList(IReadOnlyList<TenantDto> Data)
{
    public string Object => "list";
}

public sealed record AdapterDto(string Id, string Type, int R, int? NumBlocks, IReadOnlyList<string> TargetModules, long Bytes, long CreatedAt,
    string OwnedBy, string Residency, bool Pinned = false)
{
    public string Object => "adapter";
}

public sealed record AdapterList(IReadOnlyList<AdapterDto> Data)
{
    public string Object => "list";
}

/// <summary>
/// Tenants and the adapter store over HTTP: the admin API (/admin/tenants), each tenant's adapters (/v1/adapters, in the
/// caller's namespace), and vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter for tooling that drives vLLM.
/// </summary>
public static class TenantEndpoints
{
    public static void Map(WebApplication app, IApiKeyValidator keys)
    {
        var admin = app.MapGroup("/admin").AddEndpointFilter(new ApiKeyFilter(keys)).AddEndpointFilter(new AdminOnlyFilter()).WithTags("admin");
        admin.MapPost("/tenants", CreateTenant).Produces<TenantDto>(201).Produces<ErrorResponse>(400).Produces<ErrorResponse>(403).Produces<ErrorResponse>(409);
        admin.MapGet("/tenants", (TenantService t) => Results.Json(new TenantList(t.List().Select(x => TenantDto.From(x)).ToList()), Json.Options))
            .Produces<TenantList>();
        admin.MapGet("/tenants/{id}", (string id, TenantService t) => Results.Json(TenantDto.From(t.Get(id) ?? throw TenantNotFound(id)), Json.Options))
            .Produces<TenantDto>().Produces<ErrorResponse>(404);
        admin.MapDelete("/tenants/{id}", DeleteTenant).Produces(200).Produces<ErrorResponse>(404);
        admin.MapPost("/tenants/{id}/keys", RotateKey).Produces<TenantDto>(201).Produces<ErrorResponse>(404);
        admin.MapPut("/tenants/{id}/quota", SetQuota).Produces<TenantDto>().Produces<ErrorResponse>(400).Produces<ErrorResponse>(404);
        admin.MapPost("/adapters/pin", Pin).Produces<AdapterDto>().Produces<ErrorResponse>(400).Produces<ErrorResponse>(404);

        var api = app.MapGroup("/v1").AddEndpointFilter(new ApiKeyFilter(keys)).WithTags("adapters");
        api.MapPost("/adapters", Upload).DisableAntiforgery()
            .Produces<AdapterDto>(201).Produces<ErrorResponse>(400).Produces<ErrorResponse>(409).Produces<ErrorResponse>(429);
        api.MapGet("/adapters", (HttpContext http, AdapterService a, EngineHost e) =>
            Results.Json(new AdapterList(a.Visible(ApiKeyFilter.Caller(http).Scope).Select(v => Dto(v.Id, v.Record, e)).ToList()), Json.Options))
            .Produces<AdapterList>();
        api.MapGet("/adapters/{**name}", GetAdapter).Produces<AdapterDto>().Produces<ErrorResponse>(404);
        api.MapDelete("/adapters/{**name}", DeleteAdapter).Produces(200).Produces<ErrorResponse>(404);

        var vllm = app.MapGroup("/v1").AddEndpointFilter(new ApiKeyFilter(keys)).AddEndpointFilter(new AdminOnlyFilter()).WithTags("vllm");
        vllm.MapPost("/load_lora_adapter", LoadLora).Produces(200).Produces<ErrorResponse>(400).Produces<ErrorResponse>(409);
        vllm.MapPost("/unload_lora_adapter", UnloadLora).Produces(200).Produces<ErrorResponse>(404);
    }

    // ---- admin ----

    private static async Task<IResult> CreateTenant(HttpContext http, TenantService tenants)
    {
        var body = await RequestParser.ReadObjectAsync(http.Request, http.RequestAborted);
        string name = String(body, "name") ?? throw ApiException.BadRequest("'name' is required.", "name");
        try
        {
            var created = tenants.Create(name, Quota(body));
            return Results.Json(TenantDto.From(created.Tenant, created.ApiKey), Json.Options, statusCode: 201);
        }
        catch (TenantExistsException e) { throw Conflict(e.Message, "name"); }
        catch (ArgumentException e) { throw ApiException.BadRequest(e.Message, "name"); }
    }

    private static async Task<IResult> DeleteTenant(string id, TenantService tenants) =>
        await tenants.DeleteAsync(id) ? Results.Json(new { id, @object = "tenant", deleted = true }, Json.Options) : throw TenantNotFound(id);

    private static IResult RotateKey(string id, TenantService tenants)
    {
        string key = tenants.RotateKey(id) ?? throw TenantNotFound(id);
        return Results.Json(TenantDto.From(tenants.Get(id)!, key), Json.Options, statusCode: 201);
    }

    private static async Task<IResult> SetQuota(string id, HttpContext http, TenantService tenants)
    {
        var body = await RequestParser.ReadObjectAsync(http.Request, http.RequestAborted);
        try
        {
            if (!tenants.SetQuota(id, Quota(body))) throw TenantNotFound(id);
        }
        catch (ArgumentException e) { throw ApiException.BadRequest(e.Message); }
        return Results.Json(TenantDto.From(tenants.Get(id)!), Json.Options);
    }

    /// <summary>{"model": "tenant/name" or an admin adapter, "pinned": true|false}: pinned adapters stay on the device once loaded.</summary>
    private static async Task<IResult> Pin(HttpContext http, AdapterService adapters, EngineHost engine)
    {
        var body = await RequestParser.ReadObjectAsync(http.Request, http.RequestAborted);
        string model = String(body, "model") ?? throw ApiException.BadRequest("'model' is required.", "model");
        bool pinned = !body.TryGetProperty("pinned", out var p) || p.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw ApiException.BadRequest("'pinned' must be true or false.", "pinned"),
        };
        var record = adapters.Find(AdapterScope.Admin, model) ?? throw AdapterNotFound(model);
        if (!adapters.SetPinned(record, pinned)) throw AdapterNotFound(model);
        adapters.Catalog.TryGet(record.Owner, record.Name, out var updated);
        return Results.Json(Dto(model, updated ?? record, engine) with { Pinned = pinned }, Json.Options);
    }

    // ---- adapters (caller's namespace) ----

    private static async Task<IResult> Upload(HttpContext http, AdapterService adapters, EngineHost engine, IOptions<ServerOptions> options, ServerMetrics metrics)
    {
        var caller = ApiKeyFilter.Caller(http);
        var files = adapters.Files ?? throw new ApiException(500, "no adapter store", "server_error");
        var parts = await AdapterUpload.ReadAsync(http, files, options.Value);
        try
        {
            var record = await adapters.UploadAsync(caller.Scope.Owner, parts.Name, parts.Staging, caller.Tenant?.Quota);
            metrics.OnAdapterUploaded(caller.MetricsLabel);
            return Results.Json(Dto(record.Name, record, engine), Json.Options, statusCode: 201);
        }
        catch (ArgumentException e) { throw ApiException.BadRequest(e.Message, "name", "invalid_name"); }
        catch (InvalidAdapterException e) { throw ApiException.BadRequest("Invalid adapter: " + e.Message, null, "invalid_adapter"); }
        catch (AdapterExistsException e) { throw Conflict(e.Message, "name"); }
        catch (QuotaExceededException e) { throw new ApiException(429, e.Message, "insufficient_quota", null, e.Limit); }
    }

    private static IResult GetAdapter(string name, HttpContext http, AdapterService adapters, EngineHost engine)
    {
        var record = adapters.Find(ApiKeyFilter.Caller(http).Scope, name) ?? throw AdapterNotFound(name);
        return Results.Json(Dto(name, record, engine), Json.Options);
    }

    private static async Task<IResult> DeleteAdapter(string name, HttpContext http, AdapterService adapters)
    {
        var record = adapters.Find(ApiKeyFilter.Caller(http).Scope, name) ?? throw AdapterNotFound(name);
        if (!record.IsPersistent) throw ApiException.BadRequest($"The adapter '{name}' comes from the server's configuration or adapters directory; remove it there.", "name");
        if (!await adapters.RemoveAsync(record.Owner, record.Name)) throw AdapterNotFound(name);
        return Results.Json(new { id = name, @object = "adapter", deleted = true }, Json.Options);
    }

    // ---- vLLM compatibility (admin) ----

    private static async Task<IResult> LoadLora(HttpContext http, AdapterService adapters)
    {
        var body = await RequestParser.ReadObjectAsync(http.Request, http.RequestAborted);
        string name = String(body, "lora_name") ?? throw ApiException.BadRequest("'lora_name' is required.", "lora_name");
        string path = String(body, "lora_path") ?? throw ApiException.BadRequest("'lora_path' is required.", "lora_path");
        try
        {
            await adapters.RegisterPathAsync(name, path);
        }
        catch (AdapterExistsException) { throw Conflict($"The lora adapter '{name}' has already been loaded.", "lora_name"); }
        catch (ArgumentException e) { throw ApiException.BadRequest(e.Message, "lora_name"); }
        catch (DirectoryNotFoundException) { throw ApiException.BadRequest($"No adapter directory at '{path}'.", "lora_path"); }
        catch (Exception e) when (e is InvalidDataException or FileNotFoundException or NotSupportedException or System.Text.Json.JsonException)
        {
            throw ApiException.BadRequest($"Invalid adapter at '{path}': {e.Message}", "lora_path", "invalid_adapter");
        }
        return Results.Text($"Success: LoRA adapter '{name}' added successfully.", "text/plain");
    }

    private static async Task<IResult> UnloadLora(HttpContext http, AdapterService adapters)
    {
        var body = await RequestParser.ReadObjectAsync(http.Request, http.RequestAborted);
        string name = String(body, "lora_name") ?? throw ApiException.BadRequest("'lora_name' is required.", "lora_name");
        var record = adapters.Find(AdapterScope.Admin, name) ?? throw AdapterNotFound(name);
        if (!await adapters.RemoveAsync(record.Owner, record.Name)) throw AdapterNotFound(name);
        return Results.Text($"Success: LoRA adapter '{name}' removed successfully.", "text/plain");
    }

    // ---- helpers ----

    private static AdapterDto Dto(string id, AdapterRecord r, EngineHost engine)
    {
        var tier = engine.Residency.List().FirstOrDefault(x => x.Id == r.EngineId)?.Tier ?? (r.IsPersistent ? AdapterTier.Disk : AdapterTier.Device);
        return new AdapterDto(id, r.Details.Type, r.Details.R, r.Details.NumBlocks, r.Details.TargetModules, r.Details.Bytes,
            r.CreatedAt.ToUnixTimeSeconds(), r.Owner.Length == 0 ? "admin" : "tenant", tier.ToString().ToLowerInvariant(), r.Pinned);
    }

    private static TenantQuota Quota(JsonElement body) => new(
        (int?)Long(body, "max_adapters", int.MaxValue), Long(body, "max_bytes", long.MaxValue), (int?)Long(body, "max_concurrent_requests", int.MaxValue));

    private static string? String(JsonElement body, string field) =>
        !body.TryGetProperty(field, out var v) || v.ValueKind == JsonValueKind.Null ? null
        : v.ValueKind == JsonValueKind.String ? v.GetString() : throw ApiException.BadRequest($"'{field}' must be a string.", field);

    private static long? Long(JsonElement body, string field, long max) =>
        !body.TryGetProperty(field, out var v) || v.ValueKind == JsonValueKind.Null ? null
        : v.ValueKind == JsonValueKind.Number && v.TryGetInt64(out long n) && n <= max ? n
        : throw ApiException.BadRequest($"'{field}' must be an integer up to {max}.", field);

    private static ApiException Conflict(string message, string? param) => new(409, message, "invalid_request_error", param, "already_exists");
    private static ApiException TenantNotFound(string id) => new(404, $"The tenant '{id}' does not exist.", "invalid_request_error", "id", "not_found");
    private static ApiException AdapterNotFound(string name) => new(404, $"The adapter '{name}' does not exist.", "invalid_request_error", "name", "not_found");
}
