using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.WebUtilities;
using Microsoft.Extensions.Options;
using Microsoft.Net.Http.Headers;
using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Model;
using SmoaServe.Platform.FineTuning;
using SmoaServe.Platform.Tenants;

namespace SmoaServe.Server;

/// <summary>
/// OpenAI's files and fine-tuning API: POST/GET/DELETE /v1/files (chat JSONL for fine-tuning), and /v1/fine_tuning/jobs
/// (create and cancel with the admin key; tenants read their own jobs). Lists are newest first with cursor pagination
/// (after, limit, has_more). Every refusal is a 4xx in the OpenAI error shape naming the parameter.
/// </summary>
public static class FineTuningEndpoints
{
    public const int DefaultLimit = 20, MaxLimit = 100, MaxSuffixLength = 40, MaxMetadataPairs = 16;

    public static void Map(WebApplication app, IApiKeyValidator keys)
    {
        var files = app.MapGroup("/v1/files").AddEndpointFilter(new ApiKeyFilter(keys)).WithTags("files");
        files.MapPost("", UploadFile).DisableAntiforgery().Produces(200).Produces<ErrorResponse>(400);
        files.MapGet("", (HttpContext http, FineTuningService s) =>
        {
            var c = ApiKeyFilter.Caller(http);
            var (after, limit) = Paging(http);
            return ListResult(s.ListFiles(c.Scope.Owner, c.IsAdmin, after, limit), FileObject, f => f.Id);
        }).Produces(200);
        files.MapGet("/{id}", (string id, HttpContext http, FineTuningService s) =>
            Results.Json(FileObject(FindFile(http, s, id)))).Produces(200).Produces<ErrorResponse>(404);
        files.MapDelete("/{id}", (string id, HttpContext http, FineTuningService s) =>
        {
            var c = ApiKeyFilter.Caller(http);
            try
            {
                if (!s.DeleteFile(c.Scope.Owner, c.IsAdmin, id)) throw FileNotFound(id);
            }
            catch (FineTuningRequestException e) { throw ToApi(e); }
            return Results.Json(new JsonObject { ["id"] = id, ["object"] = "file", ["deleted"] = true });
        }).Produces(200).Produces<ErrorResponse>(404).Produces<ErrorResponse>(409);

        var jobs = app.MapGroup("/v1/fine_tuning/jobs").AddEndpointFilter(new ApiKeyFilter(keys)).WithTags("fine-tuning");
        jobs.MapPost("", CreateJob).AddEndpointFilter(new AdminOnlyFilter()).Produces(200).Produces<ErrorResponse>(400).Produces<ErrorResponse>(403);
        jobs.MapGet("", (HttpContext http, FineTuningService s) =>
        {
            var c = ApiKeyFilter.Caller(http);
            var (after, limit) = Paging(http);
            return ListResult(s.ListJobs(c.Scope.Owner, c.IsAdmin, after, limit), JobObject, j => j.Id);
        }).Produces(200);
        jobs.MapGet("/{id}", (string id, HttpContext http, FineTuningService s) => Results.Json(JobObject(FindJob(http, s, id))))
            .Produces(200).Produces<ErrorResponse>(404);
        jobs.MapGet("/{id}/events", (string id, HttpContext http, FineTuningService s) =>
        {
            var job = FindJob(http, s, id);
            var (after, limit) = Paging(http);
            return ListResult(s.Store.ListEvents(job.Id, after, limit), EventObject, e => e.Id);
        }).Produces(200).Produces<ErrorResponse>(404);
        jobs.MapGet("/{id}/checkpoints", (string id, HttpContext http, FineTuningService s) =>
        {
            var job = FindJob(http, s, id);
            var (after, limit) = Paging(http);
            return ListResult(s.Store.ListCheckpoints(job.Id, after, limit), c => CheckpointObject(c, job), c => c.Id);
        }).Produces(200).Produces<ErrorResponse>(404);
        jobs.MapPost("/{id}/cancel", (string id, HttpContext http, FineTuningService s) =>
        {
            var job = FindJob(http, s, id);
            try { return Results.Json(JobObject(s.Cancel(job))); }
            catch (FineTuningRequestException e) { throw ToApi(e); }
        }).AddEndpointFilter(new AdminOnlyFilter()).Produces(200).Produces<ErrorResponse>(400).Produces<ErrorResponse>(404);
    }

    // ---- files ----

    /// <summary>multipart/form-data: "purpose" = "fine-tune" and "file" = the JSONL file (at most MaxFileBytes), written to a temporary file then stored.</summary>
    private static async Task<IResult> UploadFile(HttpContext http, FineTuningService service, IOptions<ServerOptions> options)
    {
        var caller = ApiKeyFilter.Caller(http);
        long limit = options.Value.MaxFileBytes;
        var request = http.Request;
        if (request.ContentLength is { } declared && declared > limit + 64 * 1024)
            throw ApiException.BadRequest($"The upload declares {declared} bytes; files of at most {limit} bytes are accepted (MaxFileBytes).", "file", "file_too_large");
        if (http.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } size) size.MaxRequestBodySize = limit + 64 * 1024;
        if (!MediaTypeHeaderValue.TryParse(request.ContentType, out var type) || !type.MediaType.Equals("multipart/form-data", StringComparison.OrdinalIgnoreCase))
            throw ApiException.BadRequest("A file upload is multipart/form-data with the fields 'purpose' and 'file'.", "file");
        string boundary = HeaderUtilities.RemoveQuotes(type.Boundary).Value ?? "";
        if (boundary.Length is 0 or > 70) throw ApiException.BadRequest("The multipart boundary is missing or longer than 70 characters.", "file");

        string temp = service.Files.CreateTemp();
        try
        {
            string? purpose = null, filename = null;
            var reader = new MultipartReader(boundary, request.Body) { HeadersCountLimit = 16, HeadersLengthLimit = 16 * 1024, BodyLengthLimit = limit };
            int parts = 0;
            while (await reader.ReadNextSectionAsync(http.RequestAborted) is { } section)
            {
                if (++parts > 4) throw ApiException.BadRequest("The upload has more than 4 parts.", "file");
                if (!ContentDispositionHeaderValue.TryParse(section.ContentDisposition, out var disposition))
                    throw ApiException.BadRequest("Every part of the upload needs 'Content-Disposition: form-data'.", "file");
                string field = HeaderUtilities.RemoveQuotes(disposition.Name).Value ?? "";
                if (field == "purpose")
                {
                    if (purpose is not null) throw ApiException.BadRequest("The field 'purpose' is given twice.", "purpose");
                    using var buffer = new MemoryStream();
                    await Copy(section.Body, buffer, 64, "purpose", http.RequestAborted);
                    purpose = Encoding.UTF8.GetString(buffer.ToArray());
                }
                else if (field == "file")
                {
                    if (filename is not null) throw ApiException.BadRequest("The field 'file' is given twice.", "file");
                    string name = HeaderUtilities.RemoveQuotes(disposition.FileName.HasValue ? disposition.FileName : disposition.FileNameStar).Value ?? "file.jsonl";
                    filename = Path.GetFileName(name.Replace('\\', '/'));
                    if (filename.Length is 0 or > 255) filename = "file.jsonl";
                    await using var file = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16, FileOptions.Asynchronous);
                    await Copy(section.Body, file, limit, "file", http.RequestAborted);
                }
                else throw ApiException.BadRequest($"Unexpected field '{(field.Length > 40 ? field[..40] + "…" : field)}': a file upload has 'purpose' and 'file'.", field.Length > 40 ? null : field);
            }
            if (purpose is null) throw ApiException.BadRequest("The field 'purpose' is missing.", "purpose");
            if (filename is null) throw ApiException.BadRequest("The field 'file' is missing.", "file");
            try { return Results.Json(FileObject(service.AddFile(caller.Scope.Owner, filename, purpose, temp))); }
            catch (FineTuningRequestException e) { throw ToApi(e); }
        }
        catch (Exception e) when (e is InvalidDataException or IOException && e is not BadHttpRequestException && !http.RequestAborted.IsCancellationRequested)
        {
            throw ApiException.BadRequest("The multipart body is malformed: " + e.Message, "file");
        }
        finally { service.Files.Discard(temp); }
    }

    private static Task Copy(Stream body, Stream target, long max, string field, CancellationToken ct) =>
        RequestBody.CopyAtMostAsync(body, target, max,
            () => ApiException.BadRequest($"'{field}' is larger than the {max} bytes allowed.", field, field == "file" ? "file_too_large" : null), ct);

    private static StoredFile FindFile(HttpContext http, FineTuningService s, string id)
    {
        var c = ApiKeyFilter.Caller(http);
        return s.GetFile(c.Scope.Owner, c.IsAdmin, id) ?? throw FileNotFound(id);
    }

    // ---- jobs ----

    private static async Task<IResult> CreateJob(HttpContext http, FineTuningService service, ServerStatus status)
    {
        var body = await RequestParser.ReadObjectAsync(http.Request, http.RequestAborted);
        if (body.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest("The body must be a JSON object.");
        foreach (var p in body.EnumerateObject())
            if (p.Name is not ("model" or "training_file" or "validation_file" or "suffix" or "seed" or "metadata" or "method" or "tenant" or "integrations"))
                throw ApiException.BadRequest($"Unknown parameter: '{Short(p.Name)}'.", Short(p.Name), "unknown_parameter");
        string model = String(body, "model") ?? throw ApiException.BadRequest("'model' is required.", "model", "missing_required_parameter");
        string training = String(body, "training_file") ?? throw ApiException.BadRequest("'training_file' is required.", "training_file", "missing_required_parameter");
        string? validation = String(body, "validation_file");
        string? suffix = String(body, "suffix");
        if (suffix is not null && (suffix.Length is 0 or > MaxSuffixLength || !Platform.Adapters.AdapterName.IsValid(suffix)))
            throw ApiException.BadRequest($"'suffix' must be 1-{MaxSuffixLength} characters of letters, digits, '.', '_' or '-'.", "suffix");
        long seed = body.TryGetProperty("seed", out var s) && s.ValueKind != JsonValueKind.Null
            ? s.ValueKind == JsonValueKind.Number && s.TryGetInt64(out long sv) && sv >= 0 && sv <= int.MaxValue ? sv
              : throw ApiException.BadRequest($"'seed' must be an integer between 0 and {int.MaxValue}.", "seed")
            : RandomNumberGenerator.GetInt32(int.MaxValue);
        string? metadata = Metadata(body);
        var (method, hyperparameters) = Method(body);
        string? tenant = String(body, "tenant");
        var draft = new FineTuningJob
        {
            Id = "", Owner = "", Model = model, TrainingFile = training, ValidationFile = validation, Suffix = suffix, Seed = seed,
            Metadata = metadata, Method = method, Hyperparameters = hyperparameters,
        };
        try { return Results.Json(JobObject(service.CreateJob(draft, status.BaseModelId, tenant))); }
        catch (FineTuningRequestException e) { throw ToApi(e); }
    }

    /// <summary>
    /// "method": {"type": "smoa"|"lora", "&lt;type&gt;": {"hyperparameters": {...}}}, every hyperparameter a value or "auto".
    /// Defaults: n_epochs 3, batch_size 8, learning_rate 2e-3 (smoa) / 2e-4 (lora) times learning_rate_multiplier (1),
    /// r 8, num_blocks 2 (smoa), lora_alpha 2·r, target_modules all seven projections, warmup_ratio 0.03,
    /// weight_decay 0, max_grad_norm 1.
    /// </summary>
    internal static (string Method, FineTuneHyperparameters Hyperparameters) Method(JsonElement body)
    {
        string type = "smoa";
        JsonElement h = default;
        if (body.TryGetProperty("method", out var m) && m.ValueKind != JsonValueKind.Null)
        {
            if (m.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest("'method' must be an object.", "method");
            foreach (var p in m.EnumerateObject())
                if (p.Name is not ("type" or "smoa" or "lora")) throw ApiException.BadRequest($"Unknown parameter: 'method.{Short(p.Name)}' (the methods are smoa and lora).", "method." + Short(p.Name));
            type = m.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : throw ApiException.BadRequest("'method.type' must be \"smoa\" or \"lora\".", "method.type");
            if (type is not ("smoa" or "lora")) throw ApiException.BadRequest($"'method.type' must be \"smoa\" or \"lora\" (got '{Short(type)}').", "method.type");
            string other = type == "smoa" ? "lora" : "smoa";
            if (m.TryGetProperty(other, out _)) throw ApiException.BadRequest($"'method.{other}' does not go with method.type \"{type}\".", "method." + other);
            if (m.TryGetProperty(type, out var section) && section.ValueKind != JsonValueKind.Null)
            {
                if (section.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest($"'method.{type}' must be an object.", "method." + type);
                foreach (var p in section.EnumerateObject())
                    if (p.Name != "hyperparameters") throw ApiException.BadRequest($"Unknown parameter: 'method.{type}.{Short(p.Name)}'.", $"method.{type}.{Short(p.Name)}");
                if (section.TryGetProperty("hyperparameters", out h) && h.ValueKind is not (JsonValueKind.Object or JsonValueKind.Null))
                    throw ApiException.BadRequest($"'method.{type}.hyperparameters' must be an object.", $"method.{type}.hyperparameters");
            }
        }
        string at = $"method.{type}.hyperparameters";
        bool has = h.ValueKind == JsonValueKind.Object;
        string[] known = ["n_epochs", "batch_size", "learning_rate", "learning_rate_multiplier", "r", "num_blocks", "lora_alpha", "target_modules", "warmup_ratio", "weight_decay", "max_grad_norm"];
        if (has)
            foreach (var p in h.EnumerateObject())
                if (!known.Contains(p.Name)) throw ApiException.BadRequest($"Unknown hyperparameter '{Short(p.Name)}' (known: {string.Join(", ", known)}).", $"{at}.{Short(p.Name)}");

        double? Number(string name, double min, double max, bool integer)
        {
            if (!has || !h.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null || v.ValueKind == JsonValueKind.String && v.GetString() == "auto") return null;
            if (v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double d) && double.IsFinite(d) && d >= min && d <= max && (!integer || d == Math.Floor(d))) return d;
            throw ApiException.BadRequest($"'{name}' must be \"auto\" or {(integer ? "an integer" : "a number")} between {min} and {max}.", $"{at}.{name}");
        }

        int epochs = (int)(Number("n_epochs", 1, 1000, true) ?? 3);
        int batch = (int)(Number("batch_size", 1, 4096, true) ?? 8);
        double? lr = Number("learning_rate", 1e-12, 10, false), multiplier = Number("learning_rate_multiplier", 1e-6, 1000, false);
        if (lr is not null && multiplier is not null) throw ApiException.BadRequest("Give 'learning_rate' or 'learning_rate_multiplier', not both.", $"{at}.learning_rate_multiplier");
        double baseRate = type == "smoa" ? 2e-3 : 2e-4;
        int r = (int)(Number("r", 1, AdapterConfig.MaxRank, true) ?? 8);
        double? blocks = Number("num_blocks", 1, AdapterConfig.MaxBlocks, true);
        if (type == "lora" && blocks is not null && blocks != 1) throw ApiException.BadRequest("'num_blocks' is a SMoA hyperparameter.", $"{at}.num_blocks");
        double alpha = Number("lora_alpha", -1e6, 1e6, false) ?? 2.0 * r;
        var targets = Targets(h, has, at);
        return (type, new FineTuneHyperparameters
        {
            NEpochs = epochs, BatchSize = batch, LearningRate = lr ?? baseRate * (multiplier ?? 1), LearningRateMultiplier = lr is null ? multiplier ?? 1 : null,
            R = r, NumBlocks = type == "smoa" ? (int)(blocks ?? 2) : null, LoraAlpha = alpha, TargetModules = targets,
            WarmupRatio = Number("warmup_ratio", 0, 1, false) ?? 0.03, WeightDecay = Number("weight_decay", 0, 10, false) ?? 0,
            MaxGradNorm = Number("max_grad_norm", 0, 1e6, false) ?? 1.0,
        });
    }

    private static List<string> Targets(JsonElement h, bool has, string at)
    {
        var all = Enum.GetValues<Projection>().Select(ProjectionNames.ModuleName).ToList();
        if (!has || !h.TryGetProperty("target_modules", out var v) || v.ValueKind == JsonValueKind.Null) return all;
        if (v.ValueKind == JsonValueKind.String && v.GetString() is "auto" or "all" or "all-linear") return all;
        string message = $"'target_modules' must be \"auto\" or a list of {string.Join(", ", all)}.";
        if (v.ValueKind != JsonValueKind.Array || v.GetArrayLength() is 0 or > 7) throw ApiException.BadRequest(message, $"{at}.target_modules");
        var list = new List<string>();
        foreach (var e in v.EnumerateArray())
        {
            if (e.ValueKind != JsonValueKind.String || !ProjectionNames.TryParse(e.GetString()!, out var p)) throw ApiException.BadRequest(message, $"{at}.target_modules");
            if (!list.Contains(ProjectionNames.ModuleName(p))) list.Add(ProjectionNames.ModuleName(p));
        }
        return list;
    }

    /// <summary>At most 16 pairs of strings: keys up to 64 characters, values up to 512 (OpenAI's limits).</summary>
    private static string? Metadata(JsonElement body)
    {
        if (!body.TryGetProperty("metadata", out var m) || m.ValueKind == JsonValueKind.Null) return null;
        if (m.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest("'metadata' must be an object of string values.", "metadata");
        int n = 0;
        foreach (var p in m.EnumerateObject())
            if (++n > MaxMetadataPairs || p.Name.Length > 64 || p.Value.ValueKind != JsonValueKind.String || p.Value.GetString()!.Length > 512)
                throw ApiException.BadRequest($"'metadata' holds at most {MaxMetadataPairs} pairs of strings (keys up to 64 characters, values up to 512).", "metadata");
        return m.GetRawText();
    }

    private static FineTuningJob FindJob(HttpContext http, FineTuningService s, string id)
    {
        var c = ApiKeyFilter.Caller(http);
        return s.GetJob(c.Scope.Owner, c.IsAdmin, id)
            ?? throw new ApiException(404, $"The fine-tuning job '{Short(id)}' does not exist.", "invalid_request_error", "fine_tuning_job_id", "not_found");
    }

    // ---- objects ----

    public static JsonObject FileObject(StoredFile f) => new()
    {
        ["id"] = f.Id, ["object"] = "file", ["bytes"] = f.Bytes, ["created_at"] = f.CreatedAt.ToUnixTimeSeconds(), ["filename"] = f.Filename,
        ["purpose"] = f.Purpose, ["status"] = "processed", ["status_details"] = null,
    };

    public static JsonObject JobObject(FineTuningJob j)
    {
        var h = j.Hyperparameters;
        var hyper = new JsonObject
        {
            ["n_epochs"] = h.NEpochs, ["batch_size"] = h.BatchSize, ["learning_rate"] = h.LearningRate,
            ["learning_rate_multiplier"] = h.LearningRateMultiplier, ["r"] = h.R, ["lora_alpha"] = h.LoraAlpha,
            ["target_modules"] = new JsonArray(h.TargetModules.Select(t => (JsonNode?)JsonValue.Create(t)).ToArray()),
            ["warmup_ratio"] = h.WarmupRatio, ["weight_decay"] = h.WeightDecay, ["max_grad_norm"] = h.MaxGradNorm,
        };
        if (h.NumBlocks is { } k) hyper["num_blocks"] = k;
        return new JsonObject
        {
            ["object"] = "fine_tuning.job", ["id"] = j.Id, ["model"] = j.Model, ["created_at"] = j.CreatedAt.ToUnixTimeSeconds(),
            ["finished_at"] = j.FinishedAt?.ToUnixTimeSeconds(), ["fine_tuned_model"] = j.FineTunedModel, ["organization_id"] = null,
            ["tenant"] = j.Owner.Length == 0 ? null : j.Owner, ["result_files"] = new JsonArray(), ["status"] = j.Status,
            ["validation_file"] = j.ValidationFile, ["training_file"] = j.TrainingFile, ["hyperparameters"] = hyper.DeepClone(),
            ["trained_tokens"] = j.Status == JobStatus.Succeeded || j.TrainedTokens > 0 ? j.TrainedTokens : null,
            ["error"] = j.Error is { } e ? new JsonObject { ["code"] = e.Code, ["message"] = e.Message, ["param"] = e.Param } : null,
            ["estimated_finish"] = j.EstimatedFinish?.ToUnixTimeSeconds(), ["seed"] = j.Seed,
            ["metadata"] = j.Metadata is null ? null : JsonNode.Parse(j.Metadata), ["integrations"] = new JsonArray(),
            ["suffix"] = j.Suffix, ["progress"] = new JsonObject { ["step"] = j.CompletedSteps, ["total_steps"] = j.TotalSteps },
            ["method"] = new JsonObject { ["type"] = j.Method, [j.Method] = new JsonObject { ["hyperparameters"] = hyper } },
        };
    }

    public static JsonObject EventObject(JobEvent e) => new()
    {
        ["object"] = "fine_tuning.job.event", ["id"] = e.Id, ["created_at"] = e.CreatedAt.ToUnixTimeSeconds(), ["level"] = e.Level,
        ["message"] = e.Message, ["type"] = e.Type, ["data"] = e.Data is null ? null : JsonNode.Parse(e.Data),
    };

    public static JsonObject CheckpointObject(JobCheckpoint c, FineTuningJob job) => new()
    {
        ["object"] = "fine_tuning.job.checkpoint", ["id"] = c.Id, ["created_at"] = c.CreatedAt.ToUnixTimeSeconds(),
        ["fine_tuning_job_id"] = c.JobId, ["step_number"] = c.Step, ["metrics"] = JsonNode.Parse(c.Metrics),
        // a resumable training state, not a servable model
        ["fine_tuned_model_checkpoint"] = null,
    };

    private static IResult ListResult<T>(Page<T> page, Func<T, JsonObject> map, Func<T, string> id) => Results.Json(new JsonObject
    {
        ["object"] = "list", ["data"] = new JsonArray(page.Items.Select(x => (JsonNode?)map(x)).ToArray()), ["has_more"] = page.HasMore,
        ["first_id"] = page.Items.Count > 0 ? id(page.Items[0]) : null, ["last_id"] = page.Items.Count > 0 ? id(page.Items[^1]) : null,
    });

    private static (string? After, int Limit) Paging(HttpContext http)
    {
        var q = http.Request.Query;
        string? after = q["after"].ToString() is { Length: > 0 } a ? a : null;
        if (after is { Length: > 128 }) throw ApiException.BadRequest("'after' is not an id of this list.", "after");
        int limit = DefaultLimit;
        if (q["limit"].ToString() is { Length: > 0 } l && (!int.TryParse(l, out limit) || limit < 1 || limit > MaxLimit))
            throw ApiException.BadRequest($"'limit' must be an integer between 1 and {MaxLimit}.", "limit");
        return (after, limit);
    }

    private static string? String(JsonElement body, string field) =>
        !body.TryGetProperty(field, out var v) || v.ValueKind == JsonValueKind.Null ? null
        : v.ValueKind == JsonValueKind.String && v.GetString()!.Length is > 0 and <= 256 ? v.GetString()
        : throw ApiException.BadRequest($"'{field}' must be a non-empty string of at most 256 characters.", field);

    private static ApiException ToApi(FineTuningRequestException e) =>
        new(e.Status, e.Message, e.Status == 409 ? "invalid_request_error" : "invalid_request_error", e.Param, e.Code);

    private static ApiException FileNotFound(string id) => new(404, $"No such file: '{Short(id)}'.", "invalid_request_error", "file_id", "not_found");

    private static string Short(string s) => s.Length <= 64 ? s : s[..64] + "…";
}
