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
        string model = ResolveModel(runner, request.Choice, caller);
        var ids = ChatRequestIds(runner.Engine, request);
        var grammar = request.ToolChoice.ForcesCall ? ToolGrammar(request) : OutputGrammar(runner.Vocabulary, request.ResponseFormat);
        var job = runner.CreateJob(NewId("chatcmpl"), model, ids, request.Generation, caller, grammar);
        CheckLogprobsVolume([job], "top_logprobs");
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        http.Response.Headers["X-Request-Id"] = job.RequestId;
        int n = job.N;
        bool parseTools = request.ToolChoice.Mode != Text.Tools.ToolChoiceMode.None;
        var known = request.Tools.Select(t => t.Name).ToHashSet(StringComparer.Ordinal);
        var logprobs = Enumerable.Range(0, n).Select(_ => new List<ChatTokenLogprob>()).ToArray();
        void AddLogprobs(ChoicePiece p)
        {
            if (p.Token is { Logprobs: { } lp } t) logprobs[p.Choice].Add(ChatEntry(runner.Vocabulary, t.Id, lp));
        }
        CompletionOutcome[]? results;
        if (!request.Generation.Stream)
        {
            var texts = Enumerable.Range(0, n).Select(_ => new System.Text.StringBuilder()).ToArray();
            results = await runner.RunAsync([job], p =>
            {
                texts[p.Choice].Append(p.Text);
                AddLogprobs(p);
                return ValueTask.CompletedTask;
            }, http.RequestAborted);
            var choices = new List<ChatChoice>(n);
            for (int i = 0; i < n; i++)
            {
                string text = texts[i].ToString(), finish = results[i].FinishReason;
                var message = new AssistantMessage(text);
                if (parseTools)
                {
                    var parsed = Text.Tools.ToolCallParser.Parse(text, known);
                    var calls = request.ParallelToolCalls ? parsed.Calls : parsed.Calls.Take(1).ToList();
                    if (calls.Count > 0)
                    {
                        message = new AssistantMessage(string.IsNullOrEmpty(parsed.Content) ? null : parsed.Content,
                            calls.Select(c => new ToolCallDto(c.Id, new FunctionCallDto(c.Name, c.Arguments))).ToList());
                        if (finish == "stop") finish = "tool_calls";
                    }
                }
                choices.Add(new ChatChoice(i, message, finish, request.Generation.TopLogprobs is null ? null : new ChatLogprobs(logprobs[i])));
            }
            await http.Response.WriteAsJsonAsync(new ChatCompletionResponse(job.RequestId, created, model, choices, SumUsage([job], results)), Json.Options, http.RequestAborted);
        }
        else
        {
            var sse = new SseWriter(http);
            var roleSent = new bool[n];
            var callCounts = new int[n];
            var parsers = Enumerable.Range(0, n).Select(_ => parseTools ? new Text.Tools.ToolCallStreamParser(known) : null).ToArray();
            ChatCompletionChunk Chunk(int i, ChatDelta delta, string? finish, ChatLogprobs? lp = null) =>
                new(job.RequestId, created, model, [new ChatChunkChoice(i, delta, finish, lp)], null);
            ChatLogprobs? TakeLogprobs(int i)
            {
                if (request.Generation.TopLogprobs is null || logprobs[i].Count == 0) return null;
                var taken = new ChatLogprobs(logprobs[i].ToList());
                logprobs[i].Clear();
                return taken;
            }
            async ValueTask Emit(int i, IReadOnlyList<Text.Tools.ToolStreamDelta> deltas)
            {
                foreach (var d in deltas)
                {
                    if (d.Call is { } call)
                    {
                        if (!request.ParallelToolCalls && callCounts[i] > 0) continue;
                        await sse.WriteAsync(Chunk(i, new ChatDelta(null, null,
                            [new ToolCallDeltaDto(callCounts[i]++, call.Id, "function", new FunctionCallDto(call.Name, call.Arguments))]), null));
                    }
                    else if (!string.IsNullOrEmpty(d.Content)) await sse.WriteAsync(Chunk(i, new ChatDelta(null, d.Content), null, TakeLogprobs(i)));
                }
            }
            async ValueTask EnsureRole(int i)
            {
                if (roleSent[i]) return;
                roleSent[i] = true;
                await sse.WriteAsync(Chunk(i, new ChatDelta("assistant", ""), null));
            }
            results = await sse.RunAsync(async () =>
            {
                var r = await runner.RunAsync([job], async p =>
                {
                    await EnsureRole(p.Choice);
                    AddLogprobs(p);
                    if (parsers[p.Choice] is { } parser) await Emit(p.Choice, parser.Push(p.Text));
                    else if (p.Text.Length > 0) await sse.WriteAsync(Chunk(p.Choice, new ChatDelta(null, p.Text), null, TakeLogprobs(p.Choice)));
                }, http.RequestAborted);
                for (int i = 0; i < n; i++)
                {
                    await EnsureRole(i);
                    if (parsers[i] is { } parser) await Emit(i, parser.Finish());
                    string finish = callCounts[i] > 0 && r[i].FinishReason == "stop" ? "tool_calls" : r[i].FinishReason;
                    await sse.WriteAsync(Chunk(i, new ChatDelta(null, null), finish, TakeLogprobs(i)));
                }
                if (request.Generation.IncludeUsage)
                    await sse.WriteAsync(new ChatCompletionChunk(job.RequestId, created, model, [], SumUsage([job], r)));
                return r;
            });
        }
        Record(log, metrics, "chat", [job], results, request.Generation.User);
    }

    private static async Task Completions(HttpContext http, CompletionRunner runner, ServerMetrics metrics, ILogger<CompletionRunner> log)
    {
        EnsureLoaded(runner.Status);
        var request = RequestParser.ParseCompletion(await RequestParser.ReadObjectAsync(http.Request, http.RequestAborted, PromptTokens.LargeBodyCheck(runner.Engine)));
        var caller = ApiKeyFilter.Caller(http);
        string model = ResolveModel(runner, request.Choice, caller);
        var grammar = OutputGrammar(runner.Vocabulary, request.ResponseFormat);
        string requestId = NewId("cmpl");
        var jobs = new List<CompletionJob>(request.Prompts.Count);
        var echoes = new List<string>(request.Prompts.Count);
        foreach (var prompt in request.Prompts)
        {
            var ids = prompt.Ids ?? PromptTokens.Encode(runner.Engine, prompt.Text!, addSpecialTokens: true, "prompt");
            jobs.Add(runner.CreateJob(requestId, model, ids, request.Generation, caller, grammar));
            echoes.Add(!request.Echo ? "" : prompt.Text ?? runner.Engine.Tokenizer.Decode(prompt.Ids!, skipSpecialTokens: false));
        }
        CheckLogprobsVolume(jobs, "logprobs");
        int n = request.Generation.N, choices = jobs.Count * n;
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        http.Response.Headers["X-Request-Id"] = requestId;
        bool withLogprobs = request.Generation.TopLogprobs is not null;
        var offsets = new int[choices];
        CompletionLogprobs? Logprobs(int choice, GeneratedToken? token, int textLength)
        {
            if (!withLogprobs || token is not { Logprobs: { } lp } t) return null;
            var entry = CompletionEntry(runner.Vocabulary, t.Id, lp);
            var result = new CompletionLogprobs([entry.Token], [entry.Logprob], [entry.Top], [offsets[choice]]);
            return result;
        }
        CompletionOutcome[]? results;
        if (!request.Generation.Stream)
        {
            var texts = Enumerable.Range(0, choices).Select(i => new System.Text.StringBuilder(echoes[i / n])).ToArray();
            var tokens = Enumerable.Range(0, choices).Select(_ => new List<(string Token, double? Logprob, IReadOnlyDictionary<string, double>? Top, int Offset)>()).ToArray();
            results = await runner.RunAsync(jobs, p =>
            {
                if (withLogprobs && p.Token is { Logprobs: { } lp } t)
                {
                    var e = CompletionEntry(runner.Vocabulary, t.Id, lp);
                    tokens[p.Choice].Add((e.Token, e.Logprob, e.Top, texts[p.Choice].Length));
                }
                texts[p.Choice].Append(p.Text);
                return ValueTask.CompletedTask;
            }, http.RequestAborted);
            var list = Enumerable.Range(0, choices).Select(i => new CompletionChoice(i, texts[i].ToString(), results[i].FinishReason,
                withLogprobs ? new CompletionLogprobs(tokens[i].Select(t => t.Token).ToList(), tokens[i].Select(t => t.Logprob).ToList(),
                    tokens[i].Select(t => t.Top).ToList(), tokens[i].Select(t => t.Offset).ToList()) : null)).ToList();
            await http.Response.WriteAsJsonAsync(new CompletionResponse(requestId, created, model, list, SumUsage(jobs, results)), Json.Options, http.RequestAborted);
        }
        else
        {
            var sse = new SseWriter(http);
            CompletionResponse Chunk(int i, string text, string? finish, CompletionLogprobs? lp = null) =>
                new(requestId, created, model, [new CompletionChoice(i, text, finish, lp)], null);
            var echoed = new bool[choices];
            async ValueTask Echo(int i)
            {
                if (echoed[i]) return;
                echoed[i] = true;
                if (echoes[i / n].Length == 0) return;
                await sse.WriteAsync(Chunk(i, echoes[i / n], null));
                offsets[i] += echoes[i / n].Length;
            }
            results = await sse.RunAsync(async () =>
            {
                var r = await runner.RunAsync(jobs, async p =>
                {
                    await Echo(p.Choice);
                    var lp = Logprobs(p.Choice, p.Token, p.Text.Length);
                    if (p.Text.Length > 0 || lp is not null) await sse.WriteAsync(Chunk(p.Choice, p.Text, null, lp));
                    offsets[p.Choice] += p.Text.Length;
                }, http.RequestAborted);
                for (int i = 0; i < choices; i++)
                {
                    await Echo(i);
                    await sse.WriteAsync(Chunk(i, "", r[i].FinishReason));
                }
                if (request.Generation.IncludeUsage)
                    await sse.WriteAsync(new CompletionResponse(requestId, created, model, [], SumUsage(jobs, r)));
                return r;
            });
        }
        Record(log, metrics, "completions", jobs, results, request.Generation.User);
    }

    /// <summary>
    /// The name a request runs on: model, or LoRAX's adapter_id (model then absent, the base, or the same name), resolved in
    /// the caller's namespace (404 when it sees no such model).
    /// </summary>
    private static string ResolveModel(CompletionRunner runner, ModelChoice? choice, ApiCaller caller)
    {
        if (choice is { AdapterId: { } adapter, Model: { } model } && model != adapter && model != runner.Status.BaseModelId)
            throw ApiException.BadRequest($"'adapter_id' names '{adapter}' while 'model' names '{model}'; give one, or the base model as 'model'.", "adapter_id");
        string name = choice!.Name;
        runner.Adapters.Resolve(caller.Scope, name);
        return name;
    }

    /// <summary>The chat prompt: tools, tool calls and tool results go to the template with every message field.</summary>
    private static IReadOnlyList<int> ChatRequestIds(EngineHost engine, ChatRequest request)
    {
        if (!request.UsesTools) return ChatPromptIds(engine, request.Messages, addGenerationPrompt: true, addSpecialTokens: false);
        List<IReadOnlyDictionary<string, object?>> messages;
        try { messages = Text.Tools.ChatMessages.ForTemplate(request.RawMessages!.Value); }
        catch (Text.Tools.ToolRequestException e) { throw ApiException.BadRequest(e.Message, e.Param); }
        var tools = request.ToolChoice.Mode != Text.Tools.ToolChoiceMode.None ? request.ToolsJson : null;
        return PromptTokens.Chat(engine, request.Messages, addGenerationPrompt: true, addSpecialTokens: false,
            render: template => ToolPrompt.Render(template, messages, tools));
    }

    /// <summary>response_format as an output grammar; a malformed format or a schema outside the subset is a 400 naming the keyword.</summary>
    private static Text.Structured.Grammar? OutputGrammar(OutputVocabulary vocabulary, JsonElement? responseFormat)
    {
        if (responseFormat is not { } format) return null;
        try { return Text.Structured.ResponseFormats.Compile(format, vocabulary.Grammars); }
        catch (Text.Structured.ResponseFormatException e) { throw ApiException.BadRequest(e.Message, "response_format"); }
        catch (Text.Structured.UnsupportedSchemaException e)
        {
            throw ApiException.BadRequest($"response_format: the JSON Schema keyword '{e.Keyword}' (at {e.SchemaPath}) is not supported: {e.Message}",
                "response_format", "unsupported_schema_keyword");
        }
        catch (ArgumentException e) { throw ApiException.BadRequest("response_format: " + e.Message, "response_format"); }
    }

    /// <summary>The grammar of a forced tool call (tool_choice required or named): the arguments follow the function's schema.</summary>
    private static Text.Structured.Grammar ToolGrammar(ChatRequest request)
    {
        try { return Text.Tools.ToolCallGrammar.Build(request.Tools, request.ToolChoice); }
        catch (Text.Structured.UnsupportedSchemaException e)
        {
            throw ApiException.BadRequest($"tools: the JSON Schema keyword '{e.Keyword}' (at {e.SchemaPath}) is not supported: {e.Message}", "tools",
                "unsupported_schema_keyword");
        }
        catch (ArgumentException e) { throw ApiException.BadRequest("tools: " + e.Message, "tools"); }
    }

    /// <summary>Most logprob entries (choices × tokens × (alternatives + 1)) one response may carry.</summary>
    public const long MaxLogprobEntries = 500_000;

    /// <summary>A response with logprobs is bounded: n × max tokens × alternatives could otherwise ask for gigabytes of JSON.</summary>
    private static void CheckLogprobsVolume(IReadOnlyList<CompletionJob> jobs, string param)
    {
        long entries = jobs.Sum(j => j.Sampling.TopLogprobs is int top ? (long)j.N * j.Sampling.MaxTokens * (top + 1) : 0);
        if (entries > MaxLogprobEntries)
            throw ApiException.BadRequest($"This request could return {entries} logprob entries (choices × max tokens × (top_logprobs + 1)); " +
                $"at most {MaxLogprobEntries}. Lower n, max_tokens or top_logprobs.", param);
    }

    /// <summary>−∞ (a masked id) as vLLM writes it: JSON has no infinity.</summary>
    private static double Finite(double logprob) => double.IsNegativeInfinity(logprob) || double.IsNaN(logprob) ? -9999.0 : logprob;

    private static ChatTokenLogprob ChatEntry(OutputVocabulary vocabulary, int id, Engine.Generation.PositionLogprobs lp)
    {
        var (text, bytes) = vocabulary.Token(id);
        var top = lp.Top.Select(a =>
        {
            var (t, b) = vocabulary.Token(a.TokenId);
            return new ChatTopLogprob(t, Finite(a.Logprob), b.Select(x => (int)x).ToList());
        }).ToList();
        return new ChatTokenLogprob(text, Finite(lp.Chosen.Logprob), bytes.Select(x => (int)x).ToList(), top);
    }

    private static (string Token, double? Logprob, IReadOnlyDictionary<string, double> Top) CompletionEntry(OutputVocabulary vocabulary, int id,
        Engine.Generation.PositionLogprobs lp)
    {
        var top = new Dictionary<string, double>(StringComparer.Ordinal);
        foreach (var a in lp.Top) top.TryAdd(vocabulary.Token(a.TokenId).Text, Finite(a.Logprob));
        return (vocabulary.Token(id).Text, Finite(lp.Chosen.Logprob), top);
    }

    /// <summary>Each prompt counted once, every choice's tokens counted.</summary>
    private static Usage SumUsage(IReadOnlyList<CompletionJob> jobs, IReadOnlyList<CompletionOutcome> results) =>
        new(jobs.Sum(j => j.PromptIds.Count), results.Sum(r => r.CompletionTokens));

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

    private static void Record(ILogger log, ServerMetrics metrics, string endpoint, IReadOnlyList<CompletionJob> jobs, CompletionOutcome[]? results, string? user)
    {
        var job = jobs[0];
        if (results is null)
        {
            log.LogWarning("Generation {RequestId} {Endpoint} model={Model} ended with an error after streaming started", job.RequestId, endpoint, job.Model);
            return;
        }
        var usage = SumUsage(jobs, results);
        var latency = results.Max(r => r.Latency);
        metrics.OnGeneration(endpoint, job.Model, usage.PromptTokens, usage.CompletionTokens, latency);
        metrics.Routing.OnGeneration(job.Caller?.MetricsLabel ?? "_admin", endpoint, usage.PromptTokens, usage.CompletionTokens);
        log.LogInformation("Generation {RequestId} {Endpoint} model={Model} user={User} choices={Choices} prompt_tokens={PromptTokens} completion_tokens={CompletionTokens} finish={FinishReason} latency_ms={LatencyMs:F1}",
            job.RequestId, endpoint, job.Model, user, results.Length, usage.PromptTokens, usage.CompletionTokens, string.Join(",", results.Select(r => r.FinishReason).Distinct()),
            latency.TotalMilliseconds);
    }

    private static string NewId(string prefix) => $"{prefix}-{Guid.NewGuid():N}";
}

/// <summary>Server-sent events: "data: {json}\n\n" per chunk, "data: [DONE]" at the end; errors after the start become an error event.</summary>
public sealed class SseWriter(HttpContext http)
{
    public bool Started { get; private set; }

    private readonly SemaphoreSlim _lock = new(1, 1);

    /// <summary>Writes one event; the choices of one request write from several tasks, one event at a time.</summary>
    public async ValueTask WriteAsync<T>(T chunk)
    {
        string data = "data: " + JsonSerializer.Serialize(chunk, Json.Options) + "\n\n";
        await _lock.WaitAsync(http.RequestAborted);
        try
        {
            await StartAsync();
            await http.Response.WriteAsync(data, http.RequestAborted);
            await http.Response.Body.FlushAsync(http.RequestAborted);
        }
        finally { _lock.Release(); }
    }

    /// <summary>Runs the stream; an ApiException before the first chunk is left to the error middleware (proper status).</summary>
    public async Task<T?> RunAsync<T>(Func<Task<T>> body) where T : class
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
