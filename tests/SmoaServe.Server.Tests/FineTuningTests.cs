using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;
using Xunit.Abstractions;

namespace SmoaServe.Server.Tests;

/// <summary>`smoa serve` in-process on llama-a with a tenant, for the files and fine-tuning jobs API.</summary>
public sealed class FineTuningFixture : IAsyncLifetime
{
    public TestHost Host { get; private set; } = null!;
    public TenantApi Api { get; private set; } = null!;
    public string TenantKey { get; private set; } = "";
    public string TenantId { get; private set; } = "";

    public async Task InitializeAsync()
    {
        Host = await TestHost.StartAsync(null, o => o.FineTuneCheckpointSteps = 20, baseName: null, configureEngine: o =>
        {
            o.Model = FixturePaths.LlamaA;
            o.MaxRunning = 4;
        });
        Api = new TenantApi(Host.Http);
        (TenantId, TenantKey) = await Api.CreateTenant(TestHost.Key, "acme");
    }

    public async Task DisposeAsync() => await Host.DisposeAsync();
}

/// <summary>
/// The jobs API end to end on llama-a: 16 chat pairs "code i" → the number word for i uploaded as a file, a SMoA job
/// for a tenant, trained by the server's worker while it keeps serving; the tenant's new adapter then answers at least
/// 14 of 16 exactly (greedy) where the base answers at most 2, and the loss of the metrics events falls below half its
/// first value. Also: validation errors of files and jobs naming the line or parameter, pagination, cancellation.
/// </summary>
public sealed class FineTuningTests(FineTuningFixture fx, ITestOutputHelper output) : IClassFixture<FineTuningFixture>
{
    private static readonly string[] Words =
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen"];

    private static string Line(int i) =>
        $"{{\"messages\": [{{\"role\": \"user\", \"content\": \"code {i}\"}}, {{\"role\": \"assistant\", \"content\": \"{Words[i]}\"}}]}}";

    private static string CodeWords => string.Join("\n", Enumerable.Range(0, 16).Select(Line)) + "\n";

    private TenantApi Api => fx.Api;

    private async Task<string> UploadFile(string key, string content, string filename = "train.jsonl")
    {
        var r = await Api.Send(HttpMethod.Post, "/v1/files", key, FileForm("fine-tune", content, filename));
        Assert.True(r.Status == HttpStatusCode.OK, r.Text);
        Assert.Equal("file", (string?)r.Body!["object"]);
        Assert.Equal(Encoding.UTF8.GetByteCount(content), (long)r.Body["bytes"]!);
        Assert.Equal(filename, (string?)r.Body["filename"]);
        return (string)r.Body["id"]!;
    }

    private static MultipartFormDataContent FileForm(string? purpose, string? content, string filename = "train.jsonl")
    {
        var form = new MultipartFormDataContent();
        if (purpose is not null) form.Add(new StringContent(purpose), "purpose");
        if (content is not null)
        {
            var file = new ByteArrayContent(Encoding.UTF8.GetBytes(content));
            file.Headers.ContentType = new MediaTypeHeaderValue("application/jsonl");
            form.Add(file, "file", filename);
        }
        return form;
    }

    private static object SmoaMethod(int epochs, double learningRate = 0.1) => new
    {
        type = "smoa",
        smoa = new
        {
            hyperparameters = new
            {
                n_epochs = epochs, batch_size = 16, learning_rate = learningRate, r = 8, num_blocks = 2, lora_alpha = 16,
                target_modules = "auto", warmup_ratio = 0.05, weight_decay = 0.0,
            },
        },
    };

    private async Task<JsonNode> CreateJob(object body)
    {
        var r = await Api.Json(HttpMethod.Post, "/v1/fine_tuning/jobs", TestHost.Key, body);
        Assert.True(r.Status == HttpStatusCode.OK, r.Text);
        Assert.Equal("fine_tuning.job", (string?)r.Body!["object"]);
        return r.Body;
    }

    private async Task<JsonNode> WaitFor(string jobId, Func<string, bool> done, double seconds = 180)
    {
        var deadline = DateTime.UtcNow.AddSeconds(seconds);
        while (true)
        {
            var r = await Api.Send(HttpMethod.Get, $"/v1/fine_tuning/jobs/{jobId}", TestHost.Key);
            Assert.Equal(HttpStatusCode.OK, r.Status);
            if (done((string)r.Body!["status"]!)) return r.Body;
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"job {jobId}: {r.Text}");
            await Task.Delay(100);
        }
    }

    private async Task<List<JsonNode>> AllEvents(string jobId)
    {
        var events = new List<JsonNode>();
        string? after = null;
        while (true)
        {
            var r = await Api.Send(HttpMethod.Get, $"/v1/fine_tuning/jobs/{jobId}/events?limit=100" + (after is null ? "" : "&after=" + after), TestHost.Key);
            Assert.Equal(HttpStatusCode.OK, r.Status);
            var page = r.Body!["data"]!.AsArray().Select(e => e!).ToList();
            events.AddRange(page);
            if (!(bool)r.Body["has_more"]!) break;
            after = (string)r.Body["last_id"]!;
        }
        events.Reverse(); // oldest first
        return events;
    }

    /// <summary>Greedy chat answers of <paramref name="model"/> that are exactly the number word (ending the turn).</summary>
    private async Task<int> CountCorrect(string key, string model)
    {
        int correct = 0;
        for (int i = 0; i < 16; i++)
        {
            var r = await Api.Json(HttpMethod.Post, "/v1/chat/completions", key, new
            {
                model, messages = new[] { new { role = "user", content = $"code {i}" } }, max_tokens = 8, temperature = 0,
            });
            Assert.True(r.Status == HttpStatusCode.OK, r.Text);
            var choice = r.Body!["choices"]![0]!;
            if (((string?)choice["message"]!["content"])?.Trim() == Words[i] && (string?)choice["finish_reason"] == "stop") correct++;
        }
        return correct;
    }

    [Fact]
    public async Task Job_trains_a_tenant_adapter_that_answers_the_code_words_while_the_server_keeps_serving()
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        string file = await UploadFile(fx.TenantKey, CodeWords);
        int baseline = await CountCorrect(fx.TenantKey, "llama-a");

        var job = await CreateJob(new { model = "llama-a", training_file = file, validation_file = file, suffix = "codes", seed = 7, tenant = "acme", metadata = new { purpose = "test" }, method = SmoaMethod(60) });
        string id = (string)job["id"]!;
        Assert.Equal("validating_files", (string?)job["status"]);
        Assert.Equal(60, (int)job["method"]!["smoa"]!["hyperparameters"]!["n_epochs"]!);
        Assert.Equal("test", (string?)job["metadata"]!["purpose"]);

        // the server answers while the job trains
        await WaitFor(id, s => s is "running" or "succeeded" or "failed");
        int servedWhileTraining = 0;
        while ((string)(await Api.Send(HttpMethod.Get, $"/v1/fine_tuning/jobs/{id}", TestHost.Key)).Body!["status"]! == "running")
        {
            await Api.Complete(fx.TenantKey, "llama-a", "code 3", 2);
            servedWhileTraining++;
            await Task.Delay(50);
        }
        var done = await WaitFor(id, s => s is "succeeded" or "failed" or "cancelled");
        Assert.True((string?)done["status"] == "succeeded", done.ToJsonString());
        string adapter = (string)done["fine_tuned_model"]!;
        Assert.True((long)done["trained_tokens"]! > 0);
        Assert.NotNull(done["finished_at"]);

        // the adapter is in the tenant's namespace (the admin sees it as acme/NAME) and servable at once
        Assert.Contains(adapter, await Api.AdapterIds(fx.TenantKey));
        Assert.Contains("acme/" + adapter, await Api.AdapterIds(TestHost.Key));
        int trained = await CountCorrect(fx.TenantKey, adapter);

        var events = await AllEvents(id);
        var losses = events.Where(e => (string?)e["type"] == "metrics").Select(e => e["data"]!)
            .Select(d => ((int)d["step"]!, (double)d["train_loss"]!, (double)d["tokens_per_s"]!, (double)d["learning_rate"]!)).OrderBy(x => x.Item1).ToList();
        var checkpoints = await Api.Send(HttpMethod.Get, $"/v1/fine_tuning/jobs/{id}/checkpoints", TestHost.Key);
        output.WriteLine($"{losses.Count} metrics events, loss {losses[0].Item2:F3} → {losses[^1].Item2:F4}; trained {trained}/16, base {baseline}/16; " +
                         $"{servedWhileTraining} completions served while training; {clock.Elapsed.TotalSeconds:F1} s");
        Assert.Equal(60, losses.Count);
        Assert.True(losses[^1].Item2 < losses[0].Item2 / 2, $"loss {losses[0].Item2} → {losses[^1].Item2}");
        Assert.All(losses, l => Assert.True(l.Item3 > 0 && l.Item4 >= 0));
        Assert.True(trained >= 14, $"trained adapter answered {trained} of 16");
        Assert.True(baseline <= 2, $"base answered {baseline} of 16");
        Assert.True(servedWhileTraining > 0, "no completion was served while the job was running");
        Assert.Equal([40, 20], checkpoints.Body!["data"]!.AsArray().Select(c => (int)c!["step_number"]!));
        // validation loss at the checkpoints and at the end (the validation file is the training file here)
        var validLosses = events.Where(e => (string?)e["type"] == "metrics" && e["data"]!["valid_loss"] is not null)
            .Select(e => ((int)e["data"]!["step"]!, (double)e["data"]!["valid_loss"]!)).ToList();
        Assert.Equal([20, 40, 60], validLosses.Select(v => v.Item1));
        Assert.True(validLosses[^1].Item2 < losses[0].Item2 / 2, $"validation loss {validLosses[^1].Item2}");
        Assert.Contains(events, e => ((string?)e["message"])!.Contains("New fine-tuned model created: " + adapter));
        // the tenant reads its own job; another tenant does not see it
        Assert.Equal(HttpStatusCode.OK, (await Api.Send(HttpMethod.Get, $"/v1/fine_tuning/jobs/{id}", fx.TenantKey)).Status);
        var (_, otherKey) = await Api.CreateTenant(TestHost.Key, "other-" + Guid.NewGuid().ToString("N")[..6]);
        Assert.Equal(HttpStatusCode.NotFound, (await Api.Send(HttpMethod.Get, $"/v1/fine_tuning/jobs/{id}", otherKey)).Status);
        Assert.Equal(HttpStatusCode.NotFound, (await Api.Send(HttpMethod.Get, $"/v1/files/{file}", otherKey)).Status);
    }

    [Theory]
    [InlineData("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n{\"messages\": [", "line 2", "not valid JSON")]
    [InlineData("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n\n{\"prompt\": \"x\"}", "line 3", "missing \"messages\"")]
    [InlineData("{\"messages\": [{\"role\": \"wizard\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}", "line 1", "unknown role 'wizard'")]
    [InlineData("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}", "line 2", "no assistant message")]
    public async Task A_bad_training_file_fails_the_job_with_an_error_naming_the_line(string content, string line, string problem)
    {
        string file = await UploadFile(TestHost.Key, content);
        var job = await CreateJob(new { model = "llama-a", training_file = file, method = SmoaMethod(1) });
        var failed = await WaitFor((string)job["id"]!, s => s is "failed" or "succeeded" or "cancelled", 60);
        Assert.Equal("failed", (string?)failed["status"]);
        var error = failed["error"]!;
        Assert.Equal("invalid_training_file", (string?)error["code"]);
        Assert.Equal("training_file", (string?)error["param"]);
        Assert.Contains($"{file} {line}", (string)error["message"]!);
        Assert.Contains(problem, (string)error["message"]!);
        Assert.Null(failed["fine_tuned_model"]);
    }

    [Fact]
    public async Task Bad_requests_are_400_naming_the_parameter_and_tenants_may_not_create_jobs()
    {
        string file = await UploadFile(TestHost.Key, Line(1) + "\n");
        async Task Bad(object body, string param)
        {
            var r = await Api.Json(HttpMethod.Post, "/v1/fine_tuning/jobs", TestHost.Key, body);
            Assert.True(r.Status == HttpStatusCode.BadRequest, $"{param}: {(int)r.Status} {r.Text}");
            Assert.Equal("invalid_request_error", (string?)r.Body!["error"]!["type"]);
            Assert.Equal(param, (string?)r.Body["error"]!["param"]);
        }
        await Bad(new { training_file = file }, "model");
        await Bad(new { model = "llama-a" }, "training_file");
        await Bad(new { model = "gpt-4o", training_file = file }, "model");
        await Bad(new { model = "llama-a", training_file = "file-000000000000000000000000" }, "training_file");
        await Bad(new { model = "llama-a", training_file = file, validation_file = "nope" }, "validation_file");
        await Bad(new { model = "llama-a", training_file = file, tenant = "no-such-tenant" }, "tenant");
        await Bad(new { model = "llama-a", training_file = file, suffix = "has space" }, "suffix");
        await Bad(new { model = "llama-a", training_file = file, seed = -1 }, "seed");
        await Bad(new { model = "llama-a", training_file = file, metadata = new { a = 1 } }, "metadata");
        await Bad(new { model = "llama-a", training_file = file, method = new { type = "dpo" } }, "method.type");
        await Bad(new { model = "llama-a", training_file = file, method = new { type = "lora", lora = new { hyperparameters = new { n_epochs = 0 } } } }, "method.lora.hyperparameters.n_epochs");
        await Bad(new { model = "llama-a", training_file = file, method = new { type = "lora", lora = new { hyperparameters = new { num_blocks = 4 } } } }, "method.lora.hyperparameters.num_blocks");
        await Bad(new { model = "llama-a", training_file = file, method = new { type = "smoa", smoa = new { hyperparameters = new { target_modules = new[] { "q_proj", "wq" } } } } }, "method.smoa.hyperparameters.target_modules");
        await Bad(new { model = "llama-a", training_file = file, method = new { type = "smoa", smoa = new { hyperparameters = new { learning_rate = 0.1, learning_rate_multiplier = 2 } } } }, "method.smoa.hyperparameters.learning_rate_multiplier");
        await Bad(new { model = "llama-a", training_file = file, method = new { type = "smoa", smoa = new { hyperparameters = new { dropout = 0.1 } } } }, "method.smoa.hyperparameters.dropout");
        await Bad(new { model = "llama-a", training_file = file, n_epochs = 3 }, "n_epochs");

        var tenant = await Api.Json(HttpMethod.Post, "/v1/fine_tuning/jobs", fx.TenantKey, new { model = "llama-a", training_file = file });
        Assert.Equal(HttpStatusCode.Forbidden, tenant.Status);
        Assert.Equal(HttpStatusCode.Unauthorized, (await Api.Json(HttpMethod.Get, "/v1/fine_tuning/jobs", null)).Status);

        // "auto" everywhere: the documented defaults
        var auto = await CreateJob(new { model = "llama-a", training_file = file, method = new { type = "lora", lora = new { hyperparameters = new { n_epochs = "auto", learning_rate_multiplier = 2 } } } });
        var h = auto["method"]!["lora"]!["hyperparameters"]!;
        Assert.Equal(3, (int)h["n_epochs"]!);
        Assert.Equal(8, (int)h["batch_size"]!);
        Assert.Equal(4e-4, (double)h["learning_rate"]!, 12);
        Assert.Equal(8, (int)h["r"]!);
        Assert.Equal(16, (double)h["lora_alpha"]!);
        Assert.Equal(7, h["target_modules"]!.AsArray().Count);
        await Api.Send(HttpMethod.Post, $"/v1/fine_tuning/jobs/{auto["id"]}/cancel", TestHost.Key);
    }

    [Fact]
    public async Task File_uploads_are_validated_listed_with_pagination_and_deleted()
    {
        async Task BadUpload(HttpContent content, string param)
        {
            var r = await Api.Send(HttpMethod.Post, "/v1/files", TestHost.Key, content);
            Assert.True(r.Status == HttpStatusCode.BadRequest, $"{param}: {(int)r.Status} {r.Text}");
            Assert.Equal(param, (string?)r.Body!["error"]!["param"]);
        }
        await BadUpload(FileForm("assistants", "{}"), "purpose");
        await BadUpload(FileForm(null, "{}"), "purpose");
        await BadUpload(FileForm("fine-tune", null), "file");
        await BadUpload(new StringContent("{}", Encoding.UTF8, "application/json"), "file");

        var ids = new List<string>();
        for (int i = 0; i < 3; i++) ids.Add(await UploadFile(fx.TenantKey, Line(i) + "\n", $"f{i}.jsonl"));
        var first = await Api.Send(HttpMethod.Get, "/v1/files?limit=2", fx.TenantKey);
        Assert.Equal([ids[2], ids[1]], first.Body!["data"]!.AsArray().Select(f => (string)f!["id"]!));
        Assert.True((bool)first.Body["has_more"]!);
        var second = await Api.Send(HttpMethod.Get, $"/v1/files?limit=2&after={ids[1]}", fx.TenantKey);
        var rest = second.Body!["data"]!.AsArray().Select(f => (string)f!["id"]!).ToList();
        Assert.Equal(ids[0], rest[0]);
        Assert.Equal(HttpStatusCode.BadRequest, (await Api.Send(HttpMethod.Get, "/v1/files?limit=0", fx.TenantKey)).Status);
        Assert.Equal(HttpStatusCode.BadRequest, (await Api.Send(HttpMethod.Get, "/v1/files?limit=101", fx.TenantKey)).Status);

        var got = await Api.Send(HttpMethod.Get, $"/v1/files/{ids[0]}", fx.TenantKey);
        Assert.Equal("f0.jsonl", (string?)got.Body!["filename"]);
        Assert.Equal("fine-tune", (string?)got.Body["purpose"]);
        var deleted = await Api.Send(HttpMethod.Delete, $"/v1/files/{ids[0]}", fx.TenantKey);
        Assert.True((bool)deleted.Body!["deleted"]!);
        Assert.Equal(HttpStatusCode.NotFound, (await Api.Send(HttpMethod.Get, $"/v1/files/{ids[0]}", fx.TenantKey)).Status);
        Assert.Equal(HttpStatusCode.NotFound, (await Api.Send(HttpMethod.Delete, $"/v1/files/{ids[0]}", fx.TenantKey)).Status);
        Assert.False(File.Exists(Path.Combine(fx.Host.DataDir, "files", ids[0] + ".jsonl")));
        Assert.True(File.Exists(Path.Combine(fx.Host.DataDir, "files", ids[1] + ".jsonl")));
    }

    [Fact]
    public async Task A_running_job_is_cancelled_jobs_are_listed_with_pagination()
    {
        string file = await UploadFile(TestHost.Key, CodeWords);
        var job = await CreateJob(new { model = "llama-a", training_file = file, method = SmoaMethod(1000) });
        string id = (string)job["id"]!;
        var running = await WaitFor(id, s => s is "running" or "failed" or "succeeded");
        Assert.Equal("running", (string?)running["status"]);
        var inUse = await Api.Send(HttpMethod.Delete, $"/v1/files/{file}", TestHost.Key);
        Assert.Equal(HttpStatusCode.Conflict, inUse.Status);

        Assert.Equal(HttpStatusCode.Forbidden, (await Api.Send(HttpMethod.Post, $"/v1/fine_tuning/jobs/{id}/cancel", fx.TenantKey)).Status);
        Assert.Equal(HttpStatusCode.OK, (await Api.Send(HttpMethod.Post, $"/v1/fine_tuning/jobs/{id}/cancel", TestHost.Key)).Status);
        var cancelled = await WaitFor(id, s => s is "cancelled" or "failed" or "succeeded", 60);
        Assert.Equal("cancelled", (string?)cancelled["status"]);
        Assert.Null(cancelled["fine_tuned_model"]);
        Assert.True((int)cancelled["progress"]!["step"]! < 1000);
        var again = await Api.Send(HttpMethod.Post, $"/v1/fine_tuning/jobs/{id}/cancel", TestHost.Key);
        Assert.Equal(HttpStatusCode.BadRequest, again.Status);
        Assert.False(Directory.Exists(Path.Combine(fx.Host.DataDir, "fine_tuning", id)));

        // a queued job is cancelled at once; newest first, two per page
        var second = await CreateJob(new { model = "llama-a", training_file = file, method = SmoaMethod(1) });
        var third = await CreateJob(new { model = "llama-a", training_file = file, method = SmoaMethod(1) });
        foreach (var j in new[] { second, third })
            Assert.Equal(HttpStatusCode.OK, (await Api.Send(HttpMethod.Post, $"/v1/fine_tuning/jobs/{j["id"]}/cancel", TestHost.Key)).Status);
        var page = await Api.Send(HttpMethod.Get, "/v1/fine_tuning/jobs?limit=2", TestHost.Key);
        Assert.Equal([(string)third["id"]!, (string)second["id"]!], page.Body!["data"]!.AsArray().Select(j => (string)j!["id"]!));
        Assert.True((bool)page.Body["has_more"]!);
        var next = await Api.Send(HttpMethod.Get, $"/v1/fine_tuning/jobs?limit=2&after={second["id"]}", TestHost.Key);
        Assert.Equal(id, (string)next.Body!["data"]![0]!["id"]!);
        Assert.Equal(HttpStatusCode.NotFound, (await Api.Send(HttpMethod.Get, "/v1/fine_tuning/jobs/ftjob-nope/events", TestHost.Key)).Status);
    }
}
