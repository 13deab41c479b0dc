using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace SmoaServe.Tests;

/// <summary>HTTP helpers for the tenant and adapter API (admin key or a tenant key per call; no default key).</summary>
public sealed class TenantApi(HttpClient server)
{
    public HttpClient Http { get; } = new() { BaseAddress = server.BaseAddress, Timeout = server.Timeout };

    public sealed record Response(HttpStatusCode Status, JsonNode? Body, string Text, HttpResponseMessage Raw);

    public async Task<Response> Send(HttpMethod method, string path, string? key, HttpContent? content = null)
    {
        using var req = new HttpRequestMessage(method, path) { Content = content };
        req.Headers.Authorization = key is null ? null : new AuthenticationHeaderValue("Bearer", key);
        var resp = await Http.SendAsync(req);
        string text = await resp.Content.ReadAsStringAsync();
        JsonNode? body = null;
        if (text.TrimStart().StartsWith('{')) { try { body = JsonNode.Parse(text); } catch (JsonException) { } }
        return new Response(resp.StatusCode, body, text, resp);
    }

    public Task<Response> Json(HttpMethod method, string path, string? key, object? body = null) =>
        Send(method, path, key, body is null ? null : new StringContent(JsonSerializer.Serialize(body), Encoding.UTF8, "application/json"));

    /// <summary>Creates a tenant with the admin key; returns (id, api key).</summary>
    public async Task<(string Id, string Key)> CreateTenant(string adminKey, string name, object? quota = null)
    {
        var body = new JsonObject { ["name"] = name };
        if (quota is not null) foreach (var kv in JsonSerializer.SerializeToNode(quota)!.AsObject()) body[kv.Key] = kv.Value?.DeepClone();
        var r = await Send(HttpMethod.Post, "/admin/tenants", adminKey, new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json"));
        if (r.Status != HttpStatusCode.Created) throw new InvalidOperationException($"create tenant: {(int)r.Status} {r.Text}");
        return ((string)r.Body!["id"]!, (string)r.Body!["api_key"]!);
    }

    public static MultipartFormDataContent UploadContent(string? name, byte[]? config, byte[]? weights)
    {
        var form = new MultipartFormDataContent();
        if (name is not null) form.Add(new StringContent(name), "name");
        if (config is not null) form.Add(new ByteArrayContent(config), "adapter_config.json", "adapter_config.json");
        if (weights is not null) form.Add(new ByteArrayContent(weights), "adapter_model.safetensors", "adapter_model.safetensors");
        return form;
    }

    public Task<Response> Upload(string key, string name, byte[] config, byte[] weights) =>
        Send(HttpMethod.Post, "/v1/adapters", key, UploadContent(name, config, weights));

    /// <summary>Uploads an adapter directory's two files.</summary>
    public Task<Response> UploadDirectory(string key, string name, string dir) =>
        Upload(key, name, File.ReadAllBytes(Path.Combine(dir, "adapter_config.json")), File.ReadAllBytes(Path.Combine(dir, "adapter_model.safetensors")));

    /// <summary>A greedy completion's text (asserts 200).</summary>
    public async Task<string> Complete(string key, string model, string prompt, int maxTokens)
    {
        var r = await Json(HttpMethod.Post, "/v1/completions", key, new { model, prompt, max_tokens = maxTokens, temperature = 0, ignore_eos = true });
        if (r.Status != HttpStatusCode.OK) throw new InvalidOperationException($"completion on {model}: {(int)r.Status} {r.Text}");
        return (string)r.Body!["choices"]![0]!["text"]!;
    }

    public async Task<List<string>> ModelIds(string key)
    {
        var r = await Send(HttpMethod.Get, "/v1/models", key);
        return r.Body!["data"]!.AsArray().Select(m => (string)m!["id"]!).ToList();
    }

    public async Task<List<string>> AdapterIds(string key)
    {
        var r = await Send(HttpMethod.Get, "/v1/adapters", key);
        return r.Body!["data"]!.AsArray().Select(m => (string)m!["id"]!).ToList();
    }
}
