using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;

namespace SmoaServe.Server.Tests;

/// <summary>
/// Uploads to a server on the real llama-a checkpoint, validated by the engine's reader: valid SMoA and LoRA uploads
/// serve like the same adapter given on the command line; every hostile upload is a 400 that stores and lists nothing
/// and leaves the server and the valid adapters as they were.
/// </summary>
public sealed class AdapterUploadTests : IAsyncLifetime
{
    private const string Admin = TestHost.Key;
    private static readonly string Lora = Path.Combine(FixturePaths.LlamaA, "lora-adapter");
    private static readonly string Smoa = Path.Combine(FixturePaths.LlamaA, "smoa-adapter");
    private TestHost _host = null!;
    private TenantApi _api = null!;

    public async Task InitializeAsync()
    {
        _host = await TestHost.StartAsync(null, o => o.Adapters["lora"] = Lora, baseName: null, configureEngine: o => o.Model = FixturePaths.LlamaA);
        _api = new TenantApi(_host.Http);
    }

    public async Task DisposeAsync() => await _host.DisposeAsync();

    private static byte[] Config(string dir) => File.ReadAllBytes(Path.Combine(dir, "adapter_config.json"));
    private static byte[] Weights(string dir) => File.ReadAllBytes(Path.Combine(dir, "adapter_model.safetensors"));

    /// <summary>The fixture's LoRA weights with the header edited (data unchanged unless <paramref name="data"/> edits it).</summary>
    private static byte[] RewriteLora(Action<JsonObject> header, Action<byte[], JsonObject>? data = null)
    {
        var bytes = Weights(Lora);
        long n = BitConverter.ToInt64(bytes, 0);
        var json = JsonNode.Parse(Encoding.UTF8.GetString(bytes, 8, (int)n))!.AsObject();
        var body = bytes[(8 + (int)n)..];
        header(json);
        data?.Invoke(body, json);
        var h = Encoding.UTF8.GetBytes(json.ToJsonString());
        return BitConverter.GetBytes((long)h.Length).Concat(h).Concat(body).ToArray();
    }

    private static List<string> TensorNames(JsonObject h) => h.Select(kv => kv.Key).Where(k => k != "__metadata__").ToList();

    [Fact]
    public async Task Valid_uploads_serve_like_the_same_adapter_from_the_command_line()
    {
        var (_, key) = await _api.CreateTenant(Admin, "valid");
        var lora = await _api.UploadDirectory(key, "my-lora", Lora);
        Assert.True(lora.Status == HttpStatusCode.Created, lora.Text);
        Assert.Equal(("my-lora", "adapter", "lora", 4), ((string)lora.Body!["id"]!, (string)lora.Body["object"]!, (string)lora.Body["type"]!, (int)lora.Body["r"]!));
        Assert.Equal(["gate_proj", "q_proj", "v_proj"], lora.Body["target_modules"]!.AsArray().Select(x => (string)x!).Order());
        Assert.Equal(new FileInfo(Path.Combine(Lora, "adapter_config.json")).Length + new FileInfo(Path.Combine(Lora, "adapter_model.safetensors")).Length, (long)lora.Body["bytes"]!);
        Assert.NotNull(lora.Body["created_at"]);

        var smoa = await _api.UploadDirectory(key, "my-smoa", Smoa);
        Assert.True(smoa.Status == HttpStatusCode.Created, smoa.Text);
        Assert.Equal("smoa", (string)smoa.Body!["type"]!);
        Assert.True((int)smoa.Body["num_blocks"]! >= 1);

        string expected = await _api.Complete(Admin, "lora", "Once upon a time", 8);
        Assert.Equal(expected, await _api.Complete(key, "my-lora", "Once upon a time", 8));
        Assert.Equal(await _api.Complete(Admin, "valid/my-smoa", "Once upon a time", 8), await _api.Complete(key, "my-smoa", "Once upon a time", 8));
        var get = await _api.Send(HttpMethod.Get, "/v1/adapters/my-lora", key);
        Assert.Equal("device", (string)get.Body!["residency"]!);
    }

    [Fact]
    public async Task Hostile_uploads_are_400_store_nothing_and_leave_the_server_as_it_was()
    {
        var (tenantId, key) = await _api.CreateTenant(Admin, "hostile");
        Assert.Equal(HttpStatusCode.Created, (await _api.UploadDirectory(key, "good", Lora)).Status);
        const string prompt = "The quick brown fox";
        string goodAnswer = await _api.Complete(key, "good", prompt, 6);
        byte[] config = Config(Lora), weights = Weights(Lora);

        var cases = new List<(string Case, string Name, byte[]? Config, byte[]? Weights, string Expect)>
        {
            ("truncated file", "t1", config, weights[..(weights.Length / 2)], "past the end"),
            ("header length 2^60", "t2", config, BitConverter.GetBytes(1L << 60).Concat(weights[8..]).ToArray(), "header length"),
            ("offsets past the end", "t3", config, RewriteLora(h =>
            {
                var t = h[TensorNames(h)[0]]!.AsObject();
                long end = weights.Length;
                t["data_offsets"] = new JsonArray(end, end + 1024);
            }), "past the end"),
            ("overlapping offsets", "t4", config, RewriteLora(h =>
            {
                // two tensors of the same byte size read from the same bytes
                var names = TensorNames(h);
                var first = h[names[0]]!.AsObject();
                long size = (long)first["data_offsets"]![1]! - (long)first["data_offsets"]![0]!;
                var twin = names.Skip(1).First(n => (long)h[n]!["data_offsets"]![1]! - (long)h[n]!["data_offsets"]![0]! == size);
                h[twin]!["data_offsets"] = first["data_offsets"]!.DeepClone();
            }), "overlap"),
            ("wrong shape", "t5", config, RewriteLora(h =>
            {
                var a = h[TensorNames(h).First(n => n.Contains("lora_A"))]!.AsObject();
                var shape = a["shape"]!.AsArray().Select(x => (long)x!).ToArray();
                a["shape"] = new JsonArray(shape[0] * 2, shape[1] / 2); // same byte count, not the base's shape
            }), "shape"),
            ("NaN", "t6", config, RewriteLora(_ => { }, (data, h) =>
            {
                long begin = (long)h[TensorNames(h)[0]]!["data_offsets"]![0]!;
                BitConverter.GetBytes(float.NaN).CopyTo(data, begin);
            }), "NaN"),
            ("unknown peft_type", "t7", Encoding.UTF8.GetBytes(Encoding.UTF8.GetString(config).Replace("\"LORA\"", "\"IA3\"")), weights, "peft_type"),
            ("broken JSON", "t8", "{\"peft_type\": \"LORA\", \"r\": "u8.ToArray(), weights, "JSON"),
            ("name ..", "..", config, weights, "name"),
            ("name with /", "a/b", config, weights, "name"),
            ("empty name", "", config, weights, "name"),
            ("300-character name", new string('n', 300), config, weights, "name"),
            ("no weights", "t9", config, null, "adapter_model.safetensors"),
        };
        foreach (var (what, name, cfg, w, expect) in cases)
        {
            var r = await _api.Send(HttpMethod.Post, "/v1/adapters", key, TenantApi.UploadContent(name, cfg, w));
            Assert.True(r.Status == HttpStatusCode.BadRequest, $"{what}: {(int)r.Status} {r.Text}");
            string message = (string)r.Body!["error"]!["message"]!;
            Assert.True(message.Contains(expect, StringComparison.OrdinalIgnoreCase), $"{what}: '{message}' does not name '{expect}'");
            Assert.DoesNotContain(_host.DataDir, message); // no server paths in answers
        }

        // a 2 GB declared body is refused before any of it is read
        var declared = await RawPost("/v1/adapters", key, 2L << 30);
        Assert.StartsWith("HTTP/1.1 400", declared);
        Assert.Contains("MaxUploadBytes", declared);

        Assert.Equal(["good"], await _api.AdapterIds(key));
        Assert.Equal(["good"], Directory.EnumerateDirectories(Path.Combine(_host.DataDir, "adapters", tenantId)).Select(Path.GetFileName));
        string staging = Path.Combine(_host.DataDir, "adapters", ".staging");
        Assert.True(!Directory.Exists(staging) || !Directory.EnumerateFileSystemEntries(staging).Any());
        Assert.Equal(HttpStatusCode.OK, (await _host.Http.GetAsync("/health")).StatusCode);
        Assert.Equal(goodAnswer, await _api.Complete(key, "good", prompt, 6));
    }

    /// <summary>Sends only the headers of a POST declaring <paramref name="length"/> bytes; returns the response head.</summary>
    private async Task<string> RawPost(string path, string key, long length)
    {
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(_host.BaseAddress.Host, _host.BaseAddress.Port);
        var stream = tcp.GetStream();
        string head = $"POST {path} HTTP/1.1\r\nHost: {_host.BaseAddress.Authority}\r\nAuthorization: Bearer {key}\r\n" +
                      $"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: {length}\r\n\r\n--xyz\r\n";
        await stream.WriteAsync(Encoding.ASCII.GetBytes(head));
        var buffer = new byte[4096];
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        int n = await stream.ReadAsync(buffer, timeout.Token);
        return Encoding.UTF8.GetString(buffer, 0, n);
    }
}
