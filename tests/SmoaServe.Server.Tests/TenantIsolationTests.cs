using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using SmoaServe.Platform.Adapters;

namespace SmoaServe.Server.Tests;

/// <summary>
/// Two tenants on one server (fake model: an adapter's output is a hash of the sequence and its engine id): every
/// operation across tenants is denied with an answer indistinguishable from a missing name; keys are checked for
/// every state (none, wrong, revoked, rotated away); tenant keys cannot reach admin routes.
/// </summary>
public sealed class TenantIsolationTests : IAsyncLifetime
{
    private static readonly byte[] Config = Encoding.UTF8.GetBytes("{}");
    private static readonly byte[] Weights = new byte[64];
    private TestHost _host = null!;
    private TenantApi _api = null!;
    private const string Admin = TestHost.Key;

    public async Task InitializeAsync()
    {
        _host = await TestHost.StartAsync(FakeBackend.Spec(new FakeRunner(slots: 4)));
        _api = new TenantApi(_host.Http);
    }

    public async Task DisposeAsync() => await _host.DisposeAsync();

    private string EngineId(string tenantId, string name)
    {
        Assert.True(_host.Adapters.Catalog.TryGet(tenantId, name, out var r));
        return r.EngineId;
    }

    private static string Expected(string prompt, int n, string? engineId)
    {
        var seq = new FakeTokenizer().Encode(prompt, true).ToList();
        var sb = new StringBuilder();
        for (int i = 0; i < n; i++) { int t = FakeRunner.PredictByHash(seq, engineId); sb.Append((char)t); seq.Add(t); }
        return sb.ToString();
    }

    /// <summary>The error object with the adapter name replaced, to compare "someone else's" with "does not exist".</summary>
    private static string Normalized(TenantApi.Response r, string name) =>
        $"{(int)r.Status} {r.Body?["error"]?.ToJsonString().Replace(name, "NAME")}";

    [Fact]
    public async Task Every_operation_across_tenants_is_denied_like_a_missing_name()
    {
        var (aId, aKey) = await _api.CreateTenant(Admin, "acme");
        var (bId, bKey) = await _api.CreateTenant(Admin, "bolt");
        Assert.Equal(HttpStatusCode.Created, (await _api.Upload(aKey, "secret", Config, Weights)).Status);
        Assert.Equal(HttpStatusCode.Created, (await _api.Upload(bKey, "mine", Config, Weights)).Status);
        string aSecret = await _api.Complete(aKey, "secret", "hello", 8);
        Assert.Equal(Expected("hello", 8, EngineId(aId, "secret")), aSecret);

        // listing: base and own adapters only
        Assert.Equal(["fake-base", "secret"], await _api.ModelIds(aKey));
        Assert.Equal(["fake-base", "mine"], await _api.ModelIds(bKey));
        Assert.Equal(["mine"], await _api.AdapterIds(bKey));

        // each operation of B on A's adapter, against the same operation on a name nobody has
        async Task<TenantApi.Response> Chat(string model) =>
            await _api.Json(HttpMethod.Post, "/v1/chat/completions", bKey, new { model, messages = new[] { new { role = "user", content = "hi" } }, max_tokens = 2 });
        async Task<TenantApi.Response> Completion(string model) =>
            await _api.Json(HttpMethod.Post, "/v1/completions", bKey, new { model, prompt = "hi", max_tokens = 2 });
        async Task<TenantApi.Response> StreamCompletion(string model) =>
            await _api.Json(HttpMethod.Post, "/v1/completions", bKey, new { model, prompt = "hi", max_tokens = 2, stream = true });
        async Task<TenantApi.Response> Tokenize(string model) => await _api.Json(HttpMethod.Post, "/tokenize", bKey, new { model, prompt = "hi" });
        async Task<TenantApi.Response> Detokenize(string model) => await _api.Json(HttpMethod.Post, "/detokenize", bKey, new { model, tokens = new[] { 104 } });
        async Task<TenantApi.Response> GetModel(string model) => await _api.Send(HttpMethod.Get, "/v1/models/" + model, bKey);
        async Task<TenantApi.Response> GetAdapter(string model) => await _api.Send(HttpMethod.Get, "/v1/adapters/" + model, bKey);
        async Task<TenantApi.Response> Delete(string model) => await _api.Send(HttpMethod.Delete, "/v1/adapters/" + model, bKey);
        var operations = new (string Name, Func<string, Task<TenantApi.Response>> Run)[]
        {
            ("chat", Chat), ("completions", Completion), ("stream", StreamCompletion), ("tokenize", Tokenize), ("detokenize", Detokenize),
            ("get model", GetModel), ("get adapter", GetAdapter), ("delete", Delete),
        };
        foreach (var (name, run) in operations)
        {
            var other = await run("secret");
            var missing = await run("no-such-adapter");
            Assert.True(other.Status == HttpStatusCode.NotFound, $"{name}: {(int)other.Status} {other.Text}");
            Assert.Equal(Normalized(missing, "no-such-adapter"), Normalized(other, "secret"));
        }
        // the admin's "tenant/name" form means nothing to a tenant
        Assert.Equal(HttpStatusCode.NotFound, (await Completion("acme/secret")).Status);
        Assert.Equal(HttpStatusCode.NotFound, (await GetAdapter("acme/secret")).Status);

        // B uploading "secret" makes B's own adapter; A's is untouched
        Assert.Equal(HttpStatusCode.Created, (await _api.Upload(bKey, "secret", Config, Weights)).Status);
        Assert.Equal(aSecret, await _api.Complete(aKey, "secret", "hello", 8));
        string bSecret = await _api.Complete(bKey, "secret", "hello", 8);
        Assert.Equal(Expected("hello", 8, EngineId(bId, "secret")), bSecret);
        Assert.NotEqual(aSecret, bSecret);
        // the same name twice in one namespace: 409
        var again = await _api.Upload(aKey, "secret", Config, Weights);
        Assert.Equal(HttpStatusCode.Conflict, again.Status);
        Assert.Equal("already_exists", (string?)again.Body!["error"]!["code"]);

        // the admin sees and serves everything
        var adminModels = await _api.ModelIds(Admin);
        Assert.Contains("acme/secret", adminModels);
        Assert.Contains("bolt/secret", adminModels);
        Assert.Equal(aSecret, await _api.Complete(Admin, "acme/secret", "hello", 8));
        Assert.Equal(bSecret, await _api.Complete(Admin, $"{bId}/secret", "hello", 8));

        // B deletes its own "secret": A's still answers
        Assert.Equal(HttpStatusCode.OK, (await Delete("secret")).Status);
        Assert.Equal(aSecret, await _api.Complete(aKey, "secret", "hello", 8));
        Assert.Equal(HttpStatusCode.NotFound, (await Completion("secret")).Status);
    }

    [Fact]
    public async Task Keys_are_checked_in_every_state_and_tenant_keys_cannot_administer()
    {
        var (aId, aKey) = await _api.CreateTenant(Admin, "keys-a");
        var (bId, bKey) = await _api.CreateTenant(Admin, "keys-b");
        async Task<HttpStatusCode> Models(string? key) => (await _api.Send(HttpMethod.Get, "/v1/models", key)).Status;

        Assert.Equal(HttpStatusCode.OK, await Models(aKey));
        Assert.Equal(HttpStatusCode.Unauthorized, await Models(null));
        Assert.Equal(HttpStatusCode.Unauthorized, await Models("smoa-wrong"));
        Assert.Equal(HttpStatusCode.Unauthorized, await Models(aKey + "x"));
        var noKeyUpload = await _api.Send(HttpMethod.Post, "/v1/adapters", null, TenantApi.UploadContent("x", Config, Weights));
        Assert.Equal(HttpStatusCode.Unauthorized, noKeyUpload.Status);

        // rotation: the old key stops working, the new one works
        var rotated = await _api.Send(HttpMethod.Post, $"/admin/tenants/{aId}/keys", Admin);
        Assert.Equal(HttpStatusCode.Created, rotated.Status);
        string newKey = (string)rotated.Body!["api_key"]!;
        Assert.NotEqual(aKey, newKey);
        Assert.Equal(HttpStatusCode.Unauthorized, await Models(aKey));
        Assert.Equal(HttpStatusCode.OK, await Models(newKey));

        // a tenant key on admin routes: 403, whatever the route
        foreach (var (method, path) in new[] { (HttpMethod.Get, "/admin/tenants"), (HttpMethod.Post, "/admin/tenants"), (HttpMethod.Get, $"/admin/tenants/{bId}"),
                     (HttpMethod.Delete, $"/admin/tenants/{bId}"), (HttpMethod.Post, $"/admin/tenants/{bId}/keys"),
                     (HttpMethod.Post, "/v1/load_lora_adapter"), (HttpMethod.Post, "/v1/unload_lora_adapter") })
        {
            var r = await _api.Json(method, path, newKey, new { name = "evil", lora_name = "x", lora_path = "/tmp" });
            Assert.True(r.Status == HttpStatusCode.Forbidden, $"{method} {path}: {(int)r.Status}");
        }
        Assert.Equal(HttpStatusCode.OK, await Models(bKey)); // B's key untouched by anything A tried

        // deleting a tenant revokes its key and removes its adapters (rows, engine, files)
        Assert.Equal(HttpStatusCode.Created, (await _api.Upload(bKey, "doomed", Config, Weights)).Status);
        Assert.True(Directory.Exists(Path.Combine(_host.DataDir, "adapters", bId, "doomed")));
        Assert.Equal(HttpStatusCode.OK, (await _api.Send(HttpMethod.Delete, $"/admin/tenants/{bId}", Admin)).Status);
        Assert.Equal(HttpStatusCode.Unauthorized, await Models(bKey));
        Assert.DoesNotContain(_host.Adapters.Catalog.List(), r => r.Owner == bId);
        Assert.False(Directory.Exists(Path.Combine(_host.DataDir, "adapters", bId)));
        Assert.Equal(HttpStatusCode.NotFound, (await _api.Send(HttpMethod.Get, $"/admin/tenants/{bId}", Admin)).Status);
    }

    [Fact]
    public async Task Admin_api_creates_lists_and_rejects_bad_tenants()
    {
        var created = await _api.Json(HttpMethod.Post, "/admin/tenants", Admin, new { name = "listed", max_adapters = 1, max_concurrent_requests = 2 });
        Assert.Equal(HttpStatusCode.Created, created.Status);
        foreach (var field in new[] { "id", "name", "api_key", "created_at" }) Assert.NotNull(created.Body![field]);
        Assert.StartsWith("smoa-", (string)created.Body!["api_key"]!);
        var list = await _api.Send(HttpMethod.Get, "/admin/tenants", Admin);
        var entry = list.Body!["data"]!.AsArray().Single(t => (string)t!["name"]! == "listed")!;
        Assert.Null(entry["api_key"]);          // shown once, at creation
        Assert.Equal(1, (int)entry["quota"]!["max_adapters"]!);
        Assert.Equal(HttpStatusCode.Conflict, (await _api.Json(HttpMethod.Post, "/admin/tenants", Admin, new { name = "listed" })).Status);
        foreach (var bad in new[] { "", "a/b", "..", new string('x', 300) })
            Assert.Equal(HttpStatusCode.BadRequest, (await _api.Json(HttpMethod.Post, "/admin/tenants", Admin, new { name = bad })).Status);

        // quota: the second adapter of a tenant limited to one
        string key = (string)created.Body!["api_key"]!;
        Assert.Equal(HttpStatusCode.Created, (await _api.Upload(key, "one", Config, Weights)).Status);
        var second = await _api.Upload(key, "two", Config, Weights);
        Assert.Equal((HttpStatusCode)429, second.Status);
        Assert.Equal("max_adapters", (string?)second.Body!["error"]!["code"]);
        Assert.Equal(["one"], await _api.AdapterIds(key));
    }

    [Fact]
    public async Task The_admin_pins_an_adapter_on_the_device_and_a_tenant_cannot()
    {
        var (tenantId, key) = await _api.CreateTenant(Admin, "pinner");
        Assert.Equal(HttpStatusCode.Created, (await _api.Upload(key, "hot", Config, Weights)).Status);
        Assert.Equal(HttpStatusCode.Forbidden, (await _api.Json(HttpMethod.Post, "/admin/adapters/pin", key, new { model = "pinner/hot" })).Status);
        var pinned = await _api.Json(HttpMethod.Post, "/admin/adapters/pin", Admin, new { model = "pinner/hot", pinned = true });
        Assert.True(pinned.Status == HttpStatusCode.OK, pinned.Text);
        Assert.True((bool)pinned.Body!["pinned"]!);
        string engineId = EngineId(tenantId, "hot");
        Assert.True(_host.Engine.Residency.List().Single(r => r.Id == engineId).Pinned);
        Assert.True(_host.Adapters.Store!.ListAdapters(tenantId).Single().Pinned);
        Assert.Equal(HttpStatusCode.NotFound, (await _api.Json(HttpMethod.Post, "/admin/adapters/pin", Admin, new { model = "pinner/cold" })).Status);
        Assert.Equal(HttpStatusCode.OK, (await _api.Json(HttpMethod.Post, "/admin/adapters/pin", Admin, new { model = "pinner/hot", pinned = false })).Status);
        Assert.False(_host.Engine.Residency.List().Single(r => r.Id == engineId).Pinned);
    }

    [Fact]
    public async Task Vllm_load_and_unload_endpoints_drive_admin_adapters()
    {
        string dir = Path.Combine(Path.GetTempPath(), "smoa-vllm-load-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "adapter_config.json"), "{}");
        try
        {
            var load = await _api.Json(HttpMethod.Post, "/v1/load_lora_adapter", Admin, new { lora_name = "sql-lora", lora_path = dir });
            Assert.True(load.Status == HttpStatusCode.OK, load.Text);
            Assert.Contains("sql-lora", await _api.ModelIds(Admin));
            Assert.True(_host.Adapters.Catalog.TryGet("sql-lora", out var record));
            Assert.Equal(Expected("hi", 4, record.EngineId), await _api.Complete(Admin, "sql-lora", "hi", 4));
            Assert.Equal(HttpStatusCode.Conflict, (await _api.Json(HttpMethod.Post, "/v1/load_lora_adapter", Admin, new { lora_name = "sql-lora", lora_path = dir })).Status);
            Assert.Equal(HttpStatusCode.BadRequest, (await _api.Json(HttpMethod.Post, "/v1/load_lora_adapter", Admin, new { lora_name = "x", lora_path = dir + "-nope" })).Status);

            var unload = await _api.Json(HttpMethod.Post, "/v1/unload_lora_adapter", Admin, new { lora_name = "sql-lora" });
            Assert.Equal(HttpStatusCode.OK, unload.Status);
            Assert.DoesNotContain("sql-lora", await _api.ModelIds(Admin));
            Assert.Equal(HttpStatusCode.NotFound, (await _api.Json(HttpMethod.Post, "/v1/unload_lora_adapter", Admin, new { lora_name = "sql-lora" })).Status);
            Assert.True(Directory.Exists(dir)); // registered by path: the files are the caller's
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public async Task Metrics_carry_the_routing_gauges_and_per_tenant_counters()
    {
        var (_, key) = await _api.CreateTenant(Admin, "metered");
        Assert.Equal(HttpStatusCode.Created, (await _api.Upload(key, "m1", Config, Weights)).Status);
        await _api.Complete(key, "m1", "hello", 3);
        string text = await (await _api.Send(HttpMethod.Get, "/metrics", Admin)).Raw.Content.ReadAsStringAsync();
        foreach (var name in new[] { "vllm:num_requests_waiting ", "vllm:num_requests_running ", "vllm:kv_cache_usage_perc ", "vllm:lora_requests_info{" })
            Assert.Contains(name, text);
        Assert.Contains("max_lora=", text);
        Assert.Contains("smoa_tenant_requests_total{tenant=\"metered\",endpoint=\"completions\"} 1", text);
        Assert.Contains("smoa_tenant_generation_tokens_total{tenant=\"metered\"} 3", text);
        Assert.Contains("smoa_adapters{tier=\"device\"}", text);
    }
}
