using System.Text.Json;
using SmoaServe.Engine.Hosting;
using SmoaServe.Platform.Adapters;
using SmoaServe.Text;

namespace SmoaServe.Server;

/// <summary>The HTTP API: OpenAI's /v1 routes and vLLM's /tokenize, /detokenize, /health.</summary>
public static class Endpoints
{
    public static void Map(WebApplication app)
    {
        var keys = app.Services.GetRequiredService<IApiKeyValidator>();
        app.MapGet("/health", Health).WithTags("health").Produces(200).Produces<ErrorResponse>(503);

        var api = app.MapGroup("").AddEndpointFilter(new ApiKeyFilter(keys)).WithTags("api");
        api.MapGet("/v1/models", ListModels).Produces<ModelList>().Produces<ErrorResponse>(401);
        api.MapGet("/v1/models/{id}", GetModel).Produces<ModelCard>().Produces<ErrorResponse>(404);
        api.MapPost("/v1/chat/completions", ChatCompletions)
            .JsonBody<ChatCompletionRequestDoc>()
            .Produces<ChatCompletionResponse>(200, "application/json", "text/event-stream")
            .Produces<ErrorResponse>(400).Produces<ErrorResponse>(401).Produces<ErrorResponse>(404).Produces<ErrorResponse>(429);
        api.MapPost("/v1/completions", Completions)
            .JsonBody<CompletionRequestDoc>()
            .Produces<CompletionResponse>(200, "application/json", "text/event-stream")
            .Produces<ErrorResponse>(400).Produces<ErrorResponse>(401).Produces<ErrorResponse>(404).Produces<ErrorResponse>(429);
        api.MapPost("/tokenize", Tokenize).JsonBody<TokenizeRequestDoc>().Produces<TokenizeResponse>()
            .Produces<ErrorResponse>(400).Produces<ErrorResponse>(401).Produces<ErrorResponse>(404);
        // tenants' adapter names are labels of the metrics: behind the key unless the operator says otherwise
        bool openMetrics = app.Services.GetRequiredService<Microsoft.Extensions.Options.IOptions<ServerOptions>>().Value.MetricsAllowAnonymous;
        (openMetrics ? (IEndpointRouteBuilder)app : api).MapGet("/metrics", Metrics).WithTags("metrics").Produces(200, contentType: "text/plain").Produces<ErrorResponse>(401);
        api.MapPost("/detokenize", Detokenize).JsonBody<DetokenizeRequestDoc>().Produces<DetokenizeResponse>()
            .Produces<ErrorResponse>(400).Produces<ErrorResponse>(401).Produces<ErrorResponse>(404);
    }

    /// <summary>
    /// Documents the JSON body in the OpenAPI document without Accepts metadata, which would make routing reject
    /// bodies sent with another content type (bodies are parsed as JSON whatever the header says).
    /// </summary>
    private static RouteHandlerBuilder JsonBody<T>(this RouteHandlerBuilder builder) =>
        builder.AddOpenApiOperationTransformer(async (operation, context, ct) =>
        {
            var schema = await context.GetOrCreateSchemaAsync(typeof(T), null, ct);
            operation.RequestBody = new Microsoft.OpenApi.OpenApiRequestBody
            {
                Required = true,
                Content = new Dictionary<string, Microsoft.OpenApi.OpenApiMediaType> { ["application/json"] = new() { Schema = schema } },
            };
        });

    private static IResult Health(ServerStatus status, EngineHost engine) =>
        status.IsLoaded && !status.Draining && engine.Scheduler.Fault is null ? Results.Ok(new { status = "ok" })
        : Results.Json(ApiException.Unavailable(
            engine.Scheduler.Fault is { } fault ? "The model loop failed: " + fault.Message
            : status.Draining ? "The server is shutting down."
            : status.Loaded.IsFaulted ? "The model failed to load." : "The model is loading.").ToResponse(), Json.Options, statusCode: 503);

    private static Task Metrics(HttpContext http, ServerMetrics metrics) => metrics.Routing.WriteAsync(http, metrics.Registry);

    private static IResult ListModels(HttpContext http, ServerStatus status, EngineHost engine, AdapterService adapters) =>
        Results.Json(new ModelList(ModelCards(ApiKeyFilter.Caller(http).Scope, status, engine, adapters).ToList()), Json.Options);

    private static IResult GetModel(string id, HttpContext http, ServerStatus status, EngineHost engine, AdapterService adapters) =>
        Results.Json(ModelCards(ApiKeyFilter.Caller(http).Scope, status, engine, adapters).FirstOrDefault(c => c.Id == id) ?? throw ApiException.ModelNotFound(id), Json.Options);

    /// <summary>The base and the adapters the caller sees (a tenant: its own; the admin: all, tenants' as "tenant/name").</summary>
    private static IEnumerable<ModelCard> ModelCards(AdapterScope scope, ServerStatus status, EngineHost engine, AdapterService adapters)
    {
        EnsureLoaded(status);
        yield return new ModelCard(status.BaseModelId, status.CreatedAt.ToUnixTimeSeconds(), "smoa", status.BaseModelId, null, engine.MaxSequenceLength);
        foreach (var a in adapters.Visible(scope))
            yield return new ModelCard(a.Id, a.Record.CreatedAt.ToUnixTimeSeconds(), "smoa", a.Id, status.BaseModelId, engine.MaxSequenceLength);
    }

    private static async Task ChatCompletions(HttpContext http, CompletionRunner runner, ServerMetrics metrics, ILogger<CompletionRunner> log)
    {
        EnsureLoaded(runner.Status);
        var request = RequestParser.ParseChat(await RequestParser.ReadObjectAsync(http.Request, http.RequestAborted, PromptTokens.LargeBodyCheck(runner.Engine)));
        var caller = ApiKeyFilter.Caller(http);
        runner.Adapters.Resolve(caller.Scope, request.Model);
        var ids = ChatPromptIds(runner.Engine, request.Messages, addGenerationPrompt: true, addSpecialTokens: false);
        var job = runner.CreateJob(NewId("chatcmpl"), request.Model, ids, request.Generation, caller);
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        http.Response.Headers["X-Request-Id"] = job.RequestId;
        CompletionOutcome? result;
        if (!request.Generation.Stream)
        {
            var text = new System.Text.StringBuilder();
            result = await runner.RunAsync(job, t => { text.Append(t); return ValueTask.CompletedTask; }, http.RequestAborted);
            var response = new ChatCompletionResponse(job.RequestId, created, request.Model,
                [new ChatChoice(0, new AssistantMessage(text.ToString()), result.FinishReason)], result.Usage);
            await http.Response.WriteAsJsonAsync(response, Json.Options, http.RequestAborted);
        }
        else
        {
            var sse = new SseWriter(http);
            ChatCompletionChunk Chunk(ChatDelta delta, string? finish) =>
                new(job.RequestId, created, request.Model, [new ChatChunkChoice(0, delta, finish)], null);
            result = await sse.RunAsync(async () =>
            {
                var r = await runner.RunAsync(job, async t =>
                {
                    if (!sse.Started) await sse.WriteAsync(Chunk(new ChatDelta("assistant", ""), null));
                    await sse.WriteAsync(Chunk(new ChatDelta(null, t), null));
                }, http.RequestAborted);
                if (!sse.Started) await sse.WriteAsync(Chunk(new ChatDelta("assistant", ""), null));
                await sse.WriteAsync(Chunk(new ChatDelta(null, null), r.FinishReason));
                if (request.Generation.IncludeUsage)
                    await sse.WriteAsync(new ChatCompletionChunk(job.RequestId, created, request.Model, [], r.Usage));
                return r;
            });
        }
        Record(log, metrics, "chat", job, result);
    }

    private static async Task Completions(HttpContext http, CompletionRunner runner, ServerMetrics metrics, ILogger<CompletionRunner> log)
    {
        EnsureLoaded(runner.Status);
        var request = RequestParser.ParseCompletion(await RequestParser.ReadObjectAsync(http.Request, http.RequestAborted, PromptTokens.LargeBodyCheck(runner.Engine)));
        var caller = ApiKeyFilter.Caller(http);
        runner.Adapters.Resolve(caller.Scope, request.Model);
        var ids = request.PromptIds ?? PromptTokens.Encode(runner.Engine, request.PromptText!, addSpecialTokens: true, "prompt");
        var job = runner.CreateJob(NewId("cmpl"), request.Model, ids, request.Generation, caller);
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        http.Response.Headers["X-Request-Id"] = job.RequestId;
        CompletionResponse Response(string text, string? finish, Usage? usage) =>
            new(job.RequestId, created, request.Model, [new CompletionChoice(0, text, finish)], usage);
        CompletionOutcome? result;
        if (!request.Generation.Stream)
        {
            var text = new System.Text.StringBuilder();
            result = await runner.RunAsync(job, t => { text.Append(t); return ValueTask.CompletedTask; }, http.RequestAborted);
            await http.Response.WriteAsJsonAsync(Response(text.ToString(), result.FinishReason, result.Usage), Json.Options, http.RequestAborted);
        }
        else
        {
            var sse = new SseWriter(http);
            result = await sse.RunAsync(async () =>
            {
                var r = await runner.RunAsync(job, t => sse.WriteAsync(Response(t, null, null)), http.RequestAborted);
                await sse.WriteAsync(Response("", r.FinishReason, null));
                if (request.Generation.IncludeUsage)
                    await sse.WriteAsync(new CompletionResponse(job.RequestId, created, request.Model, [], r.Usage));
                return r;
            });
        }
        Record(log, metrics, "completions", job, result);
    }

    private static async Task<IResult> Tokenize(HttpContext http, ServerStatus status, EngineHost engine, AdapterService adapters)
    {
        EnsureLoaded(status);
        var request = RequestParser.ParseTokenize(await RequestParser.ReadObjectAsync(http.Request, http.RequestAborted, PromptTokens.LargeBodyCheck(engine)));
        adapters.Resolve(ApiKeyFilter.Caller(http).Scope, request.Model);
        var ids = request.Messages is { } messages
            ? ChatPromptIds(engine, messages, request.AddGenerationPrompt, request.AddSpecialTokens, engine.MaxSequenceLength)
            : PromptTokens.Encode(engine, request.Prompt!, request.AddSpecialTokens, "prompt", engine.MaxSequenceLength);
        return Results.Json(new TokenizeResponse(ids.Count, engine.MaxSequenceLength, ids), Json.Options);
    }

    private static async Task<IResult> Detokenize(HttpContext http, ServerStatus status, EngineHost engine, AdapterService adapters)
    {
        EnsureLoaded(status);
        var request = RequestParser.ParseDetokenize(await RequestParser.ReadObjectAsync(http.Request, http.RequestAborted, PromptTokens.LargeBodyCheck(engine)));
        adapters.Resolve(ApiKeyFilter.Caller(http).Scope, request.Model);
        int vocab = engine.Tokenizer.VocabSize;
        // like /tokenize, bounded by the context: no request turns into an unbounded response
        if (request.Tokens.Count > engine.MaxSequenceLength)
            throw ApiException.BadRequest($"At most {engine.MaxSequenceLength} token ids (the model's context) can be detokenized at once, got {request.Tokens.Count}.",
                "tokens", "context_length_exceeded");
        foreach (int id in request.Tokens)
            if (id >= vocab) throw ApiException.BadRequest($"Token id {id} is outside the vocabulary (size {vocab}).", "tokens");
        return Results.Json(new DetokenizeResponse(engine.Tokenizer.Decode(request.Tokens, skipSpecialTokens: false)), Json.Options);
    }

    /// <summary>The chat template rendered to text, then tokenized (the template writes BOS itself).</summary>
    private static IReadOnlyList<int> ChatPromptIds(EngineHost engine, IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, bool addSpecialTokens,
        int? budget = null) =>
        PromptTokens.Chat(engine, messages, addGenerationPrompt, addSpecialTokens, budget);

    private static void EnsureLoaded(ServerStatus status)
    {
        if (!status.IsLoaded) throw ApiException.Unavailable("The model is still loading.");
    }

    private static void Record(ILogger log, ServerMetrics metrics, string endpoint, CompletionJob job, CompletionOutcome? r)
    {
        if (r is null)
        {
            log.LogWarning("Generation {RequestId} {Endpoint} model={Model} ended with an error after streaming started", job.RequestId, endpoint, job.Model);
            return;
        }
        metrics.OnGeneration(endpoint, job.Model, r.PromptTokens, r.CompletionTokens, r.Latency);
        metrics.Routing.OnGeneration(job.Caller?.MetricsLabel ?? "_admin", endpoint, r.PromptTokens, r.CompletionTokens);
        log.LogInformation("Generation {RequestId} {Endpoint} model={Model} prompt_tokens={PromptTokens} completion_tokens={CompletionTokens} finish={FinishReason} latency_ms={LatencyMs:F1}",
            job.RequestId, endpoint, job.Model, r.PromptTokens, r.CompletionTokens, r.FinishReason, r.Latency.TotalMilliseconds);
    }

    private static string NewId(string prefix) => $"{prefix}-{Guid.NewGuid():N}";
}

/// <summary>Server-sent events: "data: {json}\n\n" per chunk, "data: [DONE]" at the end; errors after the start become an error event.</summary>
public sealed class SseWriter(HttpContext http)
{
    public bool Started { get; private set; }

    public async ValueTask WriteAsync<T>(T chunk)
    {
        await StartAsync();
        await http.Response.WriteAsync("data: " + JsonSerializer.Serialize(chunk, Json.Options) + "\n\n", http.RequestAborted);
        await http.Response.Body.FlushAsync(http.RequestAborted);
    }

    /// <summary>Runs the stream; an ApiException before the first chunk is left to the error middleware (proper status).</summary>
    public async Task<CompletionOutcome?> RunAsync(Func<Task<CompletionOutcome>> body)
    {
        try
        {
            var result = await body();
            await http.Response.WriteAsync("data: [DONE]\n\n", http.RequestAborted);
            await http.Response.Body.FlushAsync(http.RequestAborted);
            return result;
        }
        catch (ApiException e) when (Started)
        {
            await http.Response.WriteAsync("data: " + JsonSerializer.Serialize(e.ToResponse(), Json.Options) + "\n\ndata: [DONE]\n\n", http.RequestAborted);
            return null;
        }
    }

    private async ValueTask StartAsync()
    {
        if (Started) return;
        Started = true;
        http.Response.StatusCode = 200;
        http.Response.ContentType = "text/event-stream";
        http.Response.Headers.CacheControl = "no-cache";
        http.Response.Headers["X-Accel-Buffering"] = "no";
        await http.Response.StartAsync(http.RequestAborted);
    }
}
