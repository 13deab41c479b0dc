using System.Text;
using System.Text.Json.Nodes;

namespace SmoaServe.Server.Tests;

/// <summary>
/// Requests that break HTTP itself, sent over raw sockets: each gets a 4xx in the OpenAI error shape (also when Kestrel
/// refuses it before any middleware runs), never a 5xx, and the server keeps serving.
/// </summary>
public class ProtocolEdgeTests(FakeServerFixture fx) : IClassFixture<FakeServerFixture>
{
    private const string Key = TestHost.Key;

    private static string Post(string path, string headers, string body = "") =>
        $"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {Key}\r\nContent-Type: application/json\r\n{headers}\r\n{body}";

    private const string Json = """{"model":"fake-base","prompt":"hi","max_tokens":2}""";

    public static TheoryData<string, string, int> Cases()
    {
        var data = new TheoryData<string, string, int>();
        // endpoints that read the body refuse the framing (400); the others answer before reading it (404 / 405)
        foreach (var (path, status) in new[] { ("/v1/completions", 400), ("/v1/chat/completions", 400), ("/tokenize", 400), ("/detokenize", 400),
                     ("/health", 405), ("/v1/models", 405), ("/metrics", 405), ("/nowhere", 404) })
        {
            data.Add($"chunk size ffffffffffffffffff on {path}", Post(path, "Transfer-Encoding: chunked\r\n", "ffffffffffffffffff\r\n{}\r\n0\r\n\r\n"), status);
            data.Add($"Content-Length -1 on {path}", Post(path, "Content-Length: -1\r\n", Json), 400);
        }
        data.Add("Content-Length not a number", Post("/v1/completions", "Content-Length: abc\r\n", Json), 400);
        data.Add("two different Content-Lengths", Post("/v1/completions", $"Content-Length: {Json.Length}\r\nContent-Length: 3\r\n", Json), 400);
        data.Add("chunk size not hex", Post("/v1/completions", "Transfer-Encoding: chunked\r\n", "zz\r\n{}\r\n0\r\n\r\n"), 400);
        data.Add("chunk without its CRLF", Post("/v1/completions", "Transfer-Encoding: chunked\r\n", "2\r\n{}XX0\r\n\r\n"), 400);
        data.Add("chunk extension too long", Post("/v1/completions", "Transfer-Encoding: chunked\r\n", "2;" + new string('e', 40000) + "\r\n{}\r\n0\r\n\r\n"), 400);
        data.Add("unknown transfer coding", Post("/v1/completions", "Transfer-Encoding: gzip\r\n", Json), 400);
        data.Add("garbage request line", "GARBAGE\r\n\r\n", 400);
        data.Add("HTTP/9.9", "GET /health HTTP/9.9\r\nHost: x\r\n\r\n", 400);
        data.Add("no Host header", "GET /v1/models HTTP/1.1\r\n\r\n", 400);
        data.Add("NUL in the path", "GET /v1/mod\0els HTTP/1.1\r\nHost: x\r\n\r\n", 400);
        data.Add("NUL in a header value", $"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\nAuthorization: Bearer {Key}\r\n\r\n", 400);
        data.Add("space before a header colon", "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n", 400);
        data.Add("64 KB header", $"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: {new string('a', 64 * 1024)}\r\n\r\n", 431);
        data.Add("40 KB URL", $"GET /v1/models?{new string('a', 40 * 1024)} HTTP/1.1\r\nHost: x\r\n\r\n", 414);
        data.Add("body over the limit (Content-Length)", Post("/v1/completions", $"Content-Length: {8 << 20}\r\n", "{"), 413);
        data.Add("unknown method", "BREW /v1/models HTTP/1.1\r\nHost: x\r\n\r\n", 405);
        data.Add("openapi v2", "GET /openapi/v2.json HTTP/1.1\r\nHost: x\r\n\r\n", 404);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task Every_protocol_error_is_a_4xx_in_the_openai_shape(string name, string request, int status)
    {
        var r = await RawHttp.SendAsync(fx.Host.BaseAddress, request);
        Assert.True(r.Status == status, $"{name}: {r.Status}\n{r.Head}\n{r.Body}");
        var error = JsonNode.Parse(r.Body)!["error"]!;
        Assert.False(string.IsNullOrEmpty((string?)error["message"]), name);
        Assert.NotNull((string?)error["type"]);
        Assert.Equal("application/json", r.Header("Content-Type")?.Split(';')[0]);
        Assert.Equal(System.Net.HttpStatusCode.OK, (await fx.Host.Http.GetAsync("/health")).StatusCode);
    }
}
