using System.Text.Json;
using System.Text.Json.Serialization;

namespace SmoaServe.Server;

/// <summary>An error answered in the OpenAI shape {"error": {"message", "type", "param", "code"}}.</summary>
public sealed class ApiException(int status, string message, string type, string? param = null, string? code = null) : Exception(message)
{
    public int Status { get; } = status;
    public string Type { get; } = type;
    public string? Param { get; } = param;
    public string? Code { get; } = code;
    public int? RetryAfterSeconds { get; init; }

    public static ApiException BadRequest(string message, string? param = null, string? code = null) =>
        new(400, message, "invalid_request_error", param, code);
    public static ApiException ModelNotFound(string model) =>
        new(404, $"The model `{(model.Length > 128 ? model[..128] + "…" : model)}` does not exist.", "invalid_request_error", "model", "model_not_found");
    public static ApiException Unauthorized(string message) =>
        new(401, message, "invalid_request_error", null, "invalid_api_key");
    public static ApiException TooManyRequests(string message, int retryAfter) =>
        new(429, message, "rate_limit_exceeded", null, "rate_limit_exceeded") { RetryAfterSeconds = retryAfter };
    public static ApiException Unavailable(string message) =>
        new(503, message, "service_unavailable", null, "service_unavailable");

    public ErrorResponse ToResponse() => new(new ErrorBody(Message, Type, Param, Code));
}

public sealed record ErrorBody(
    [property: JsonPropertyName("message")] string Message,
    [property: JsonPropertyName("type")] string Type,
    // OpenAI always sends both keys, null when there is nothing to say
    [property: JsonPropertyName("param"), JsonIgnore(Condition = JsonIgnoreCondition.Never)] string? Param,
    [property: JsonPropertyName("code"), JsonIgnore(Condition = JsonIgnoreCondition.Never)] string? Code);

public sealed record ErrorResponse([property: JsonPropertyName("error")] ErrorBody Error);

public static class ApiErrorWriter
{
    /// <summary>Writes the error unless the response has started (then the caller ends the stream).</summary>
    public static async Task WriteAsync(HttpContext context, ApiException error)
    {
        if (context.Response.HasStarted) return;
        context.Response.Clear();
        context.Response.StatusCode = error.Status;
        if (error.RetryAfterSeconds is { } s) context.Response.Headers.RetryAfter = s.ToString(System.Globalization.CultureInfo.InvariantCulture);
        if (error.Status == 401) context.Response.Headers.WWWAuthenticate = "Bearer";
        context.Response.ContentType = "application/json";
        await context.Response.WriteAsync(JsonSerializer.Serialize(error.ToResponse(), Json.Options), context.RequestAborted);
    }
}

/// <summary>
/// Turns every exception of a request into an OpenAI-shaped error; nothing a client sends crashes the process. A request
/// whose client has gone (the connection was closed) is a cancellation, not an error: nothing is written, it is logged and
/// counted as 499 (nginx's "client closed request") when no response had started.
/// </summary>
public sealed class ApiErrorMiddleware(RequestDelegate next, ILogger<ApiErrorMiddleware> logger)
{
    /// <summary>HttpContext.Items key set when the client went away before the response was complete.</summary>
    public const string ClientClosedItem = "smoa.client-closed";
    public const int ClientClosedStatus = 499;

    public async Task InvokeAsync(HttpContext context)
    {
        try
        {
            await next(context);
        }
        catch (Exception e) when (context.RequestAborted.IsCancellationRequested || e is ClientClosedRequestException)
        {
            ClientClosed(context);
        }
        catch (ApiException e)
        {
            await WriteAsync(context, e);
        }
        catch (SmoaServe.Platform.Adapters.UnknownModelException e)
        {
            await WriteAsync(context, ApiException.ModelNotFound(e.Model));
        }
        catch (BadHttpRequestException e)
        {
            await WriteAsync(context, new ApiException(e.StatusCode, e.Message, "invalid_request_error", null,
                e.StatusCode == StatusCodes.Status413PayloadTooLarge ? "request_too_large" : "bad_http_request"));
        }
        catch (Exception e)
        {
            logger.LogError(e, "Unhandled error in {Path}", context.Request.Path);
            await WriteAsync(context, new ApiException(500, "internal error: " + e.Message, "server_error"));
        }
    }

    private async Task WriteAsync(HttpContext context, ApiException error)
    {
        try { await ApiErrorWriter.WriteAsync(context, error); }
        catch (Exception) when (context.RequestAborted.IsCancellationRequested) { ClientClosed(context); }
    }

    private void ClientClosed(HttpContext context)
    {
        context.Items[ClientClosedItem] = true;
        if (!context.Response.HasStarted) context.Response.StatusCode = ClientClosedStatus;
        logger.LogInformation("Client closed the request {Method} {Path} before its response was complete", context.Request.Method, context.Request.Path);
    }
}

public static class Json
{
    public static JsonSerializerOptions Options { get; } = new()
    {
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
    };
}

/// <summary>The client went away while its request was being read (its body ended before the declared length).</summary>
public sealed class ClientClosedRequestException(Exception inner) : IOException("The client closed the connection before sending the whole request body.", inner);
