using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace SmoaServe.Cli.Commands.Hostile;

/// <summary>
/// `smoa bench hostile`: attacks a `smoa serve` child process the way a hostile client and a careless operator would,
/// and reports what held: a fuzz suite (every class of <see cref="FuzzRequests"/>), HTTP protocol edges over raw
/// sockets, overload, a disconnect storm, a soak with the server's RSS, concurrent huge prompts (latency, RSS and its
/// return), hostile adapter folders (a FIFO, a 1 GB file, a link out of the folder) measured by the inter-token latency
/// of a running stream, and kill -9 during an adapter copy and mid-stream, with a restart. Exit code 1 when a check fails.
/// The CI runs it scaled down (tests/SmoaServe.Cli.Tests/HostileSuiteTests.cs).
/// </summary>
public static class HostileBench
{
    public const string Usage = """
        usage: smoa bench hostile --model DIR [options]

          --model DIR          checkpoint to serve (a child `smoa serve` on a free port, its own data and adapters folders)
          --adapter DIR        an adapter served as "tenant" (default DIR/lora-adapter when it exists)
          --sections LIST      fuzz,protocol,overload,storm,soak,huge,adapters,kill (default: all)
          --fuzz N             fuzz requests (default 2600)
          --overload N         concurrent streaming clients against 4 slots + 8 queued (default 256)
          --storm N            streams opened and dropped at random moments (default 512)
          --soak N             requests of the soak, 4 at a time (default 8000)
          --huge N             concurrent prompts of --huge-mb MB each (default 4 of 3.9)
          --stall-tokens N     tokens of the stream timed while hostile adapter folders are handled (default 400)
          --max-model-len N    context of the served model (default 512)
          --json               the figures as one JSON object on the last line
        """;

    public sealed record Settings
    {
        public required string Model { get; init; }
        public string? Adapter { get; init; }
        public IReadOnlySet<string> Sections { get; init; } = AllSections;
        public int Fuzz { get; init; } = 2600;
        public int Overload { get; init; } = 256;
        public int Storm { get; init; } = 512;
        public int Soak { get; init; } = 8000;
        public int Huge { get; init; } = 4;
        public double HugeMb { get; init; } = 3.9;
        public int StallTokens { get; init; } = 400;
        public int MaxModelLen { get; init; } = 512;
        public TextWriter Log { get; init; } = Console.Out;
    }

    public static readonly IReadOnlySet<string> AllSections = new HashSet<string> { "fuzz", "protocol", "overload", "storm", "soak", "huge", "adapters", "kill" };

    public sealed class Figures
    {
        public Dictionary<string, Dictionary<int, int>> FuzzByClass { get; } = new();
        public int FuzzRequests => FuzzByClass.Values.Sum(c => c.Values.Sum());
        public int Fuzz5xx => FuzzByClass.Values.Sum(c => c.Where(kv => kv.Key >= 500 || kv.Key == 0).Sum(kv => kv.Value));
        public int Fuzz4xx => FuzzByClass.Values.Sum(c => c.Where(kv => kv.Key is >= 400 and < 500).Sum(kv => kv.Value));
        public int Fuzz2xx => FuzzByClass.Values.Sum(c => c.Where(kv => kv.Key is >= 200 and < 300).Sum(kv => kv.Value));
        public int Unshaped { get; set; }
        public List<string> Failures { get; } = new();
        public int ProcessExits { get; set; }
        public Dictionary<int, int> Protocol { get; } = new();
        public int OverloadCompleted { get; set; }
        public int Overload429 { get; set; }
        public int OverloadOther { get; set; }
        public double StormSecondsToIdle { get; set; } = -1;
        public int StormStreams { get; set; }
        public int SoakRequests { get; set; }
        public int SoakErrors { get; set; }
        public double SoakRssStartMb { get; set; }
        public double SoakRssEndMb { get; set; }
        public double SoakRssMaxMb { get; set; }
        public List<double> HugeLatencyMs { get; } = new();
        public List<int> HugeStatus { get; } = new();
        public double HugeRssBaselineMb { get; set; }
        public double HugeRssPeakMb { get; set; }
        public double HugeSecondsToBaseline { get; set; } = -1;
        /// <summary>Server CPU time (all threads) spent on the huge prompts: their cost without the machine's contention.</summary>
        public double HugeServerCpuMs { get; set; }
        public double ItlP99IdleMs { get; set; }
        public Dictionary<string, double> ItlP99WithFolderMs { get; } = new();
        public List<string> HostileFoldersListed { get; } = new();
        public double KillRestartSeconds { get; set; } = -1;
        public bool KillSameOutput { get; set; }
        public bool PartialCopyRefusedThenServed { get; set; }

        public bool Passed => Failures.Count == 0;
    }

    public static int Run(string[] args)
    {
        var cli = CliArgs.Parse(args, ["model", "adapter", "sections", "fuzz", "overload", "storm", "soak", "huge", "huge-mb", "stall-tokens", "max-model-len"], ["json"]);
        if (cli.Help) { Console.WriteLine(Usage); return 0; }
        string model = cli.Required("model");
        var sections = cli.Get("sections") is { } list ? list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToHashSet() : AllSections;
        foreach (var s in sections) if (!AllSections.Contains(s)) throw new UsageException($"unknown section '{s}'");
        bool json = cli.Flag("json");
        var settings = new Settings
        {
            Model = model, Adapter = cli.Get("adapter"), Sections = sections, Fuzz = cli.GetInt("fuzz", 2600), Overload = cli.GetInt("overload", 256),
            Storm = cli.GetInt("storm", 512), Soak = cli.GetInt("soak", 8000), Huge = cli.GetInt("huge", 4), HugeMb = cli.GetDouble("huge-mb", 3.9),
            StallTokens = cli.GetInt("stall-tokens", 400), MaxModelLen = cli.GetInt("max-model-len", 512), Log = json ? Console.Error : Console.Out,
        };
        var figures = RunAsync(settings).GetAwaiter().GetResult();
        if (json) Console.WriteLine(JsonSerializer.Serialize(figures, new JsonSerializerOptions { NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals }));
        return figures.Passed ? 0 : 1;
    }

    public static async Task<Figures> RunAsync(Settings s)
    {
        var f = new Figures();
        string root = Path.Combine(Path.GetTempPath(), "smoa-hostile-" + Guid.NewGuid().ToString("N"));
        string data = Path.Combine(root, "data"), adapters = Path.Combine(root, "adapters");
        Directory.CreateDirectory(data);
        Directory.CreateDirectory(adapters);
        string? adapterSource = s.Adapter ?? (Directory.Exists(Path.Combine(s.Model, "lora-adapter")) ? Path.Combine(s.Model, "lora-adapter") : null);
        string key = "hostile-" + Guid.NewGuid().ToString("N");
        var serveArgs = new List<string> { "--model", s.Model, "--data", data, "--adapters-dir", adapters, "--max-running", "4", "--max-queued", "8",
            "--max-model-len", s.MaxModelLen.ToString(), "--max-prefill-chunk", "32", "--served-model-name", "base" };
        if (adapterSource is not null) serveArgs.AddRange(["--adapter", "tenant=" + adapterSource]);
        var env = new Dictionary<string, string> { ["SMOA__ADAPTERSPOLLSECONDS"] = "0.1", ["Serilog__MinimumLevel__Default"] = "Warning" };
        var clock = Stopwatch.StartNew();
        var server = await ServerProcess.StartAsync(serveArgs, key, env);
        s.Log.WriteLine($"smoa serve (pid {server.Pid}) healthy after {clock.Elapsed.TotalSeconds:F1} s on {server.Url}; RSS {server.Rss() / 1048576.0:F0} MB");
        using var http = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = 512 }) { BaseAddress = server.Url, Timeout = TimeSpan.FromSeconds(120) };
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", key);
        string tenant = adapterSource is not null ? "tenant" : "base";
        try
        {
            if (s.Sections.Contains("fuzz")) await Section("fuzz", () => Fuzz(s, f, http, server, tenant));
            if (s.Sections.Contains("protocol")) await Section("protocol", () => Protocol(s, f, server));
            if (s.Sections.Contains("overload")) await Section("overload", () => Overload(s, f, http));
            if (s.Sections.Contains("storm")) await Section("storm", () => Storm(s, f, http));
            if (s.Sections.Contains("soak")) await Section("soak", () => Soak(s, f, http, server));
            if (s.Sections.Contains("huge")) await Section("huge", () => HugePrompts(s, f, http, server));
            if (s.Sections.Contains("adapters")) await Section("adapters", () => HostileFolders(s, f, http, server, adapters, adapterSource));
            if (s.Sections.Contains("kill"))
                await Section("kill", async () => { server = await KillAndRestart(s, f, http, server, serveArgs, key, env, adapters, adapterSource); });
            if (server.HasExited) { f.ProcessExits++; f.Failures.Add($"the server exited ({server.ExitCode})"); }
        }
        finally
        {
            server.Dispose();
            try { Directory.Delete(root, true); } catch (IOException) { }
        }
        s.Log.WriteLine(f.Passed ? "hostile: all checks held" : "hostile: FAILED:\n  " + string.Join("\n  ", f.Failures.Take(50)));
        return f;

        async Task Section(string name, Func<Task> run)
        {
            var c = Stopwatch.StartNew();
            await run();
            s.Log.WriteLine($"  ({name}: {c.Elapsed.TotalSeconds:F1} s)");
            if (server.HasExited) throw new InvalidOperationException($"the server exited during {name}:\n{server.Log}");
        }
    }

    // ---- fuzz ----

    private static async Task Fuzz(Settings s, Figures f, HttpClient http, ServerProcess server, string tenant)
    {
        var gen = new FuzzRequests("base", tenant, seed: 2600);
        var generating = Stopwatch.StartNew();
        var requests = gen.Generate(s.Fuzz).ToList();
        s.Log.WriteLine($"fuzz: {requests.Count} requests generated in {generating.Elapsed.TotalSeconds:F1} s ({requests.Sum(r => (long)(r.Body?.Length ?? 0)) / 1e6:F0} MB of bodies)");
        var latency = new Dictionary<string, List<double>>();
        await Parallel.ForEachAsync(requests, new ParallelOptions { MaxDegreeOfParallelism = 4 }, async (r, ct) =>
        {
            using var msg = new HttpRequestMessage(new HttpMethod(r.Method), r.Path);
            // a body over the server's limit is refused before it is read: with 100-continue the client hears the 413
            // instead of failing to send the rest of the body into a closed connection
            if (r.Body is { Length: > 4 << 20 }) msg.Headers.ExpectContinue = true;
            if (r.Body is not null)
            {
                msg.Content = new ByteArrayContent(r.Body);
                if (r.ContentType is not null) msg.Content.Headers.TryAddWithoutValidation("Content-Type", r.ContentType);
            }
            int status;
            string body;
            var clock = Stopwatch.StartNew();
            try
            {
                using var resp = await http.SendAsync(msg, ct);
                status = (int)resp.StatusCode;
                body = await resp.Content.ReadAsStringAsync(ct);
                if (status >= 400) CheckShape(f, r.ToString(), status, body, resp.Content.Headers.ContentType?.MediaType);
            }
            catch (HttpRequestException e)
            {
                status = 0;
                body = e.Message;
            }
            lock (f)
            {
                if (!f.FuzzByClass.TryGetValue(r.Class, out var byStatus)) f.FuzzByClass[r.Class] = byStatus = new();
                byStatus[status] = byStatus.GetValueOrDefault(status) + 1;
                if (!latency.TryGetValue(r.Class, out var ms)) latency[r.Class] = ms = new();
                ms.Add(clock.Elapsed.TotalMilliseconds);
                if (status >= 500 || status == 0) f.Failures.Add($"fuzz {status}: {r} -> {Short(body)}");
            }
        });
        if (server.HasExited) f.ProcessExits++;
        s.Log.WriteLine($"fuzz: {f.FuzzRequests} requests: {f.Fuzz2xx} 2xx, {f.Fuzz4xx} 4xx, {f.Fuzz5xx} 5xx or no answer; {f.Unshaped} error bodies not in the OpenAI shape; process exits {f.ProcessExits}");
        foreach (var (cls, byStatus) in f.FuzzByClass.OrderBy(kv => Array.IndexOf(FuzzRequests.Classes, kv.Key)))
            s.Log.WriteLine($"  {cls,-10} {string.Join(", ", byStatus.OrderBy(kv => kv.Key).Select(kv => $"{kv.Key}: {kv.Value}"))}" +
                            $"  (median {latency[cls].Order().ElementAt(latency[cls].Count / 2):F0} ms, max {latency[cls].Max():F0} ms)");
    }

    private static void CheckShape(Figures f, string what, int status, string body, string? mediaType)
    {
        bool ok;
        try
        {
            var error = JsonNode.Parse(body)?["error"] as JsonObject;
            ok = mediaType == "application/json" && error is not null && error["message"] is JsonValue m && m.GetValueKind() == JsonValueKind.String
                 && error["type"] is JsonValue t && t.GetValueKind() == JsonValueKind.String && error.ContainsKey("param") && error.ContainsKey("code");
        }
        catch (JsonException) { ok = false; }
        if (ok) return;
        lock (f)
        {
            f.Unshaped++;
            f.Failures.Add($"{status} not in the OpenAI error shape ({mediaType}): {what} -> {Short(body)}");
        }
    }

    private static string Short(string s) => s.Length > 300 ? s[..300] + "…" : s;

    // ---- protocol edges ----

    public static IReadOnlyList<(string Name, string Request)> ProtocolCases(string key)
    {
        string Post(string path, string headers, string body = "") =>
            $"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n{headers}\r\n{body}";
        const string json = """{"model":"base","prompt":"hi","max_tokens":2}""";
        var cases = new List<(string, string)>();
        foreach (var path in new[] { "/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize", "/health", "/v1/models", "/metrics", "/nowhere" })
        {
            cases.Add(($"chunk size overflow on {path}", Post(path, "Transfer-Encoding: chunked\r\n", "ffffffffffffffffff\r\n{}\r\n0\r\n\r\n")));
            cases.Add(($"Content-Length -1 on {path}", Post(path, "Content-Length: -1\r\n", json)));
        }
        cases.AddRange([
            ("Content-Length not a number", Post("/v1/completions", "Content-Length: abc\r\n", json)),
            ("two different Content-Lengths", Post("/v1/completions", $"Content-Length: {json.Length}\r\nContent-Length: 3\r\n", json)),
            ("Content-Length and chunked", Post("/v1/completions", $"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", $"{json.Length:x}\r\n{json}\r\n0\r\n\r\n")),
            ("chunk size not hex", Post("/v1/completions", "Transfer-Encoding: chunked\r\n", "zz\r\n{}\r\n0\r\n\r\n")),
            ("chunk without its CRLF", Post("/v1/completions", "Transfer-Encoding: chunked\r\n", "2\r\n{}XX0\r\n\r\n")),
            ("chunk extension of 40 KB", Post("/v1/completions", "Transfer-Encoding: chunked\r\n", "2;" + new string('e', 40000) + "\r\n{}\r\n0\r\n\r\n")),
            ("unknown transfer coding", Post("/v1/completions", "Transfer-Encoding: gzip\r\n", json)),
            ("body shorter than Content-Length, then end of stream", Post("/v1/completions", "Content-Length: 500\r\n", json)),
            ("garbage request line", "GARBAGE\r\n\r\n"),
            ("binary request line", "\u0016\u0003\u0001\u0002\u0000\u0001\u0000\u01fc\r\n\r\n"),
            ("HTTP/9.9", "GET /health HTTP/9.9\r\nHost: x\r\n\r\n"),
            ("HTTP/1.1 without Host", "GET /v1/models HTTP/1.1\r\n\r\n"),
            ("NUL in the path", "GET /v1/mod\0els HTTP/1.1\r\nHost: x\r\n\r\n"),
            ("NUL in a header", $"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\nAuthorization: Bearer {key}\r\n\r\n"),
            ("space before a header colon", "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n"),
            ("folded header", $"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\nAuthorization: Bearer {key}\r\n\r\n"),
            ("64 KB header", $"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: {new string('a', 64 * 1024)}\r\n\r\n"),
            ("300 headers", "GET /v1/models HTTP/1.1\r\nHost: x\r\n" + string.Concat(Enumerable.Range(0, 300).Select(i => $"X-H{i}: v\r\n")) + "\r\n"),
            ("40 KB URL", $"GET /v1/models?{new string('a', 40 * 1024)} HTTP/1.1\r\nHost: x\r\n\r\n"),
            ("body over the limit", Post("/v1/completions", $"Content-Length: {64 << 20}\r\n", "{")),
            ("unknown method", "BREW /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"),
            ("TRACE", "TRACE /health HTTP/1.1\r\nHost: x\r\n\r\n"),
            ("absolute-form target", $"GET http://x/v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n"),
            ("asterisk target", "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"),
            ("websocket upgrade", "GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"),
            ("h2c upgrade", "GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"),
            ("HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            ("expect 100-continue", Post("/v1/completions", $"Expect: 100-continue\r\nContent-Length: {json.Length}\r\n", json)),
            ("openapi v2", "GET /openapi/v2.json HTTP/1.1\r\nHost: x\r\n\r\n"),
            ("no key", "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"),
            ("a 10 KB key", $"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {new string('k', 10_000)}\r\n\r\n"),
        ]);
        return cases;
    }

    private static async Task Protocol(Settings s, Figures f, ServerProcess server)
    {
        var answers = new List<string>();
        foreach (var (name, request) in ProtocolCases(server.Key))
        {
            var r = await RawExchange(server.Url, Encoding.Latin1.GetBytes(request), halfClose: name.EndsWith("end of stream", StringComparison.Ordinal));
            answers.Add($"{name}: {(r.Status == 0 ? "closed" : r.Status)}");
            f.Protocol[r.Status] = f.Protocol.GetValueOrDefault(r.Status) + 1;
            if (r.Status >= 500) f.Failures.Add($"protocol '{name}': {r.Status}");
            else if (r.Status >= 400) CheckShape(f, "protocol " + name, r.Status, r.Body, r.ContentType);
        }
        s.Log.WriteLine($"protocol edges: {f.Protocol.Values.Sum()} raw requests: {string.Join(", ", f.Protocol.OrderBy(kv => kv.Key).Select(kv => $"{(kv.Key == 0 ? "closed" : kv.Key)}: {kv.Value}"))}");
        s.Log.WriteLine("  " + string.Join("; ", answers));
    }

    private sealed record RawResponse(int Status, string? ContentType, string Body);

    /// <summary>One request over a raw socket; the first response (status 0 when the server closed without one).</summary>
    private static async Task<RawResponse> RawExchange(Uri server, byte[] request, bool halfClose = false)
    {
        using var client = new TcpClient();
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        await client.ConnectAsync(server.Host, server.Port, cts.Token);
        var stream = client.GetStream();
        try
        {
            await stream.WriteAsync(request, cts.Token);
            if (halfClose) client.Client.Shutdown(SocketShutdown.Send);
        }
        catch (IOException) { }
        var received = new MemoryStream();
        var buffer = new byte[16384];
        try
        {
            while (true)
            {
                int n = await stream.ReadAsync(buffer, cts.Token);
                if (n == 0) break;
                received.Write(buffer, 0, n);
                string text = Encoding.Latin1.GetString(received.ToArray());
                int end = text.IndexOf("\r\n\r\n", StringComparison.Ordinal);
                if (end < 0) continue;
                var head = text[..end].Split("\r\n");
                string? Header(string h) => head.Skip(1).Select(l => l.Split(':', 2)).Where(p => p.Length == 2 && p[0].Trim().Equals(h, StringComparison.OrdinalIgnoreCase)).Select(p => p[1].Trim()).FirstOrDefault();
                int status = head[0].Split(' ') is { Length: > 1 } parts && int.TryParse(parts[1], out int st) ? st : 0;
                if (status == 100) { received.SetLength(0); continue; }
                string body = text[(end + 4)..];
                if (Header("Content-Length") is { } cl && long.TryParse(cl, out long len) && body.Length >= len)
                    return new RawResponse(status, Header("Content-Type")?.Split(';')[0], Encoding.UTF8.GetString(Encoding.Latin1.GetBytes(body[..(int)len])));
                if (Header("Transfer-Encoding") is { } te && te.Contains("chunked") && body.EndsWith("0\r\n\r\n", StringComparison.Ordinal))
                    return new RawResponse(status, Header("Content-Type")?.Split(';')[0], Dechunk(body));
            }
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or SocketException) { }
        string all = Encoding.Latin1.GetString(received.ToArray());
        int e2 = all.IndexOf("\r\n\r\n", StringComparison.Ordinal);
        if (e2 < 0) return new RawResponse(0, null, all);
        var h2 = all[..e2].Split("\r\n");
        int code = h2[0].Split(' ') is { Length: > 1 } p2 && int.TryParse(p2[1], out int c2) ? c2 : 0;
        return new RawResponse(code, null, all[(e2 + 4)..]);
    }

    private static string Dechunk(string body)
    {
        var sb = new StringBuilder();
        int pos = 0;
        while (pos < body.Length)
        {
            int eol = body.IndexOf("\r\n", pos, StringComparison.Ordinal);
            if (eol < 0 || !int.TryParse(body[pos..eol].Split(';')[0], System.Globalization.NumberStyles.HexNumber, null, out int size) || size == 0) break;
            sb.Append(body, eol + 2, Math.Min(size, body.Length - eol - 2));
            pos = eol + 2 + size + 2;
        }
        return Encoding.UTF8.GetString(Encoding.Latin1.GetBytes(sb.ToString()));
    }

    // ---- overload, disconnect storm, soak ----

    private static StringContent Body(object o) => new(JsonSerializer.Serialize(o), Encoding.UTF8, "application/json");

    /// <summary>A streaming completion read to its end: (status, complete with [DONE], Retry-After present, chunk arrival times).</summary>
    private static async Task<(int Status, bool Done, bool RetryAfter, List<double> ArrivalsMs, string Error)> Stream(HttpClient http, string model, int maxTokens,
        CancellationToken ct = default)
    {
        using var req = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
        {
            Content = Body(new { model, prompt = "The history of the city begins", max_tokens = maxTokens, temperature = 0, ignore_eos = true, stream = true }),
        };
        using var resp = await http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead, ct);
        var arrivals = new List<double>();
        if (resp.StatusCode != HttpStatusCode.OK)
            return ((int)resp.StatusCode, false, resp.Headers.RetryAfter is not null, arrivals, await resp.Content.ReadAsStringAsync(ct));
        var clock = Stopwatch.StartNew();
        using var reader = new StreamReader(await resp.Content.ReadAsStreamAsync(ct));
        bool done = false;
        while (await reader.ReadLineAsync(ct) is { } line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal)) continue;
            if (line == "data: [DONE]") { done = true; break; }
            if (line.Contains("\"error\"")) return (200, false, false, arrivals, line);
            arrivals.Add(clock.Elapsed.TotalMilliseconds);
        }
        return (200, done, false, arrivals, "");
    }

    private static async Task Overload(Settings s, Figures f, HttpClient http)
    {
        var results = await Task.WhenAll(Enumerable.Range(0, s.Overload).Select(_ => Stream(http, "base", 32)));
        foreach (var r in results)
        {
            if (r.Status == 200 && r.Done) f.OverloadCompleted++;
            else if (r.Status == 429 && r.RetryAfter) f.Overload429++;
            else { f.OverloadOther++; f.Failures.Add($"overload: {r.Status} done={r.Done} {Short(r.Error)}"); }
        }
        s.Log.WriteLine($"overload: {s.Overload} concurrent streams on 4 slots + 8 queued: {f.OverloadCompleted} completed, {f.Overload429} refused 429 with Retry-After, {f.OverloadOther} other");
    }

    private static async Task<(double Running, double Queued)> Gauges(HttpClient http)
    {
        var text = await http.GetStringAsync("/metrics");
        double Value(string name) => text.Split('\n').Where(l => l.StartsWith(name + " ", StringComparison.Ordinal))
            .Select(l => double.Parse(l.Split(' ')[1], System.Globalization.CultureInfo.InvariantCulture)).FirstOrDefault();
        return (Value("smoa_running_requests"), Value("smoa_queued_requests"));
    }

    private static async Task Storm(Settings s, Figures f, HttpClient http)
    {
        var rng = new Random(512);
        var tasks = Enumerable.Range(0, s.Storm).Select(async i =>
        {
            using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(rng.Next(0, 400)));
            try { await Stream(http, "base", 200, cts.Token); }
            catch (Exception e) when (e is OperationCanceledException or HttpRequestException or IOException) { }
        }).ToList();
        await Task.WhenAll(tasks);
        f.StormStreams = s.Storm;
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < TimeSpan.FromSeconds(30))
        {
            var (running, queued) = await Gauges(http);
            if (running == 0 && queued == 0) { f.StormSecondsToIdle = clock.Elapsed.TotalSeconds; break; }
            await Task.Delay(50);
        }
        if (f.StormSecondsToIdle < 0) f.Failures.Add("storm: slots still held 30 s after every client left");
        var after = await Stream(http, "base", 8);
        if (!after.Done) f.Failures.Add($"storm: a request after the storm failed ({after.Status})");
        s.Log.WriteLine($"disconnect storm: {s.Storm} streams dropped at random moments; every slot free {f.StormSecondsToIdle:F2} s after the last client left");
    }

    private static async Task Soak(Settings s, Figures f, HttpClient http, ServerProcess server)
    {
        int warmup = Math.Min(200, s.Soak / 10);
        int done = 0;
        double Mb() => server.Rss() / 1048576.0;
        async Task One(int i)
        {
            HttpResponseMessage resp = (i % 4) switch
            {
                0 => await http.PostAsync("/v1/completions", Body(new { model = "base", prompt = $"Request {i} says", max_tokens = 8, temperature = 0.8, seed = i })),
                1 => await http.PostAsync("/v1/chat/completions", Body(new { model = "base", messages = new[] { new { role = "user", content = $"Question {i}?" } }, max_tokens = 8, stream = true })),
                2 => await http.PostAsync("/tokenize", Body(new { model = "base", prompt = new string('a', i % 500) + " end" })),
                _ => await http.PostAsync("/v1/completions", Body(new { model = "base", prompt = "x", max_tokens = -1 })),
            };
            await resp.Content.ReadAsStringAsync();
            bool expected = i % 4 == 3 ? resp.StatusCode == HttpStatusCode.BadRequest : resp.IsSuccessStatusCode || (int)resp.StatusCode == 429;
            int n = Interlocked.Increment(ref done);
            lock (f)
            {
                if (!expected) { f.SoakErrors++; if (f.SoakErrors < 10) f.Failures.Add($"soak request {i}: {(int)resp.StatusCode}"); }
                if (n == warmup) f.SoakRssStartMb = Mb();
                if (n % 100 == 0) f.SoakRssMaxMb = Math.Max(f.SoakRssMaxMb, Mb());
            }
        }
        await Parallel.ForEachAsync(Enumerable.Range(0, s.Soak), new ParallelOptions { MaxDegreeOfParallelism = 4 }, async (i, _) => await One(i));
        await Task.Delay(1500);   // the reclaimer's next look
        f.SoakRequests = s.Soak;
        f.SoakRssEndMb = Mb();
        f.SoakRssMaxMb = Math.Max(f.SoakRssMaxMb, f.SoakRssEndMb);
        s.Log.WriteLine($"soak: {s.Soak} requests, {f.SoakErrors} unexpected answers; RSS after {warmup}: {f.SoakRssStartMb:F0} MB, at the end {f.SoakRssEndMb:F0} MB, max {f.SoakRssMaxMb:F0} MB");
    }

    // ---- huge prompts ----

    private static async Task HugePrompts(Settings s, Figures f, HttpClient http, ServerProcess server)
    {
        int chars = (int)(s.HugeMb * 1_000_000);
        var sentence = "All work and no play makes a dull model. ";
        string content = string.Concat(Enumerable.Repeat(sentence, chars / sentence.Length + 1))[..chars];
        byte[] body = JsonSerializer.SerializeToUtf8Bytes(new { model = "base", messages = new[] { new { role = "user", content } } });
        await http.PostAsync("/v1/chat/completions", Body(new { model = "base", messages = new[] { new { role = "user", content = "warm" } }, max_tokens = 1 }));
        await Task.Delay(2000);
        double Mb() => server.Rss() / 1048576.0;
        f.HugeRssBaselineMb = Mb();
        double peak = f.HugeRssBaselineMb;
        using var sampling = new CancellationTokenSource();
        var sampler = Task.Run(async () => { while (!sampling.IsCancellationRequested) { peak = Math.Max(peak, Mb()); await Task.Delay(20); } });
        var cpu = server.CpuTime();
        var results = await Task.WhenAll(Enumerable.Range(0, s.Huge).Select(async _ =>
        {
            var content = new ByteArrayContent(body);
            content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
            var clock = Stopwatch.StartNew();
            using var resp = await http.PostAsync("/v1/chat/completions", content);
            string text = await resp.Content.ReadAsStringAsync();
            return ((int)resp.StatusCode, clock.Elapsed.TotalMilliseconds, text);
        }));
        f.HugeServerCpuMs = (server.CpuTime() - cpu).TotalMilliseconds;
        var settle = Stopwatch.StartNew();
        while (settle.Elapsed < TimeSpan.FromSeconds(10))
        {
            if (Mb() <= f.HugeRssBaselineMb + 50) { f.HugeSecondsToBaseline = settle.Elapsed.TotalSeconds; break; }
            await Task.Delay(100);
        }
        sampling.Cancel();
        await sampler;
        f.HugeRssPeakMb = peak;
        foreach (var (status, ms, text) in results)
        {
            f.HugeStatus.Add(status);
            f.HugeLatencyMs.Add(ms);
            if (status != 400 || !text.Contains("context_length_exceeded")) f.Failures.Add($"huge prompt: {status} {Short(text)}");
        }
        if (f.HugeSecondsToBaseline < 0) f.Failures.Add($"huge prompts: RSS {Mb():F0} MB not back within 50 MB of {f.HugeRssBaselineMb:F0} MB after 10 s");
        s.Log.WriteLine($"huge prompts: {s.Huge} concurrent {body.Length / 1e6:F1} MB chat bodies -> {string.Join(", ", results.Select(r => $"{r.Item1} in {r.Item2:F0} ms"))}; " +
                        $"server CPU {f.HugeServerCpuMs:F0} ms for all {s.Huge}; RSS {f.HugeRssBaselineMb:F0} MB -> peak {f.HugeRssPeakMb:F0} MB, back within 50 MB after {(f.HugeSecondsToBaseline < 0 ? "more than 10" : f.HugeSecondsToBaseline.ToString("F1"))} s");
    }

    // ---- hostile adapter folders ----

    private static double P99(List<double> arrivals)
    {
        var gaps = arrivals.Zip(arrivals.Skip(1), (a, b) => b - a).OrderBy(x => x).ToList();
        return gaps.Count == 0 ? double.NaN : gaps[Math.Min(gaps.Count - 1, (int)Math.Ceiling(gaps.Count * 0.99) - 1)];
    }

    private static async Task HostileFolders(Settings s, Figures f, HttpClient http, ServerProcess server, string adaptersDir, string? adapterSource)
    {
        int tokens = Math.Min(s.StallTokens, s.MaxModelLen - 16);
        await Stream(http, "base", 16);
        var idle = new List<double>();
        for (int i = 0; i < 3; i++) idle.Add(P99((await Stream(http, "base", tokens)).ArrivalsMs));
        f.ItlP99IdleMs = idle.Order().ElementAt(1);                  // the median of three idle runs

        var folders = new (string Name, Action<string> Make)[]
        {
            ("fifo-config", dir =>
            {
                Directory.CreateDirectory(dir);
                using var p = Process.Start("mkfifo", Path.Combine(dir, "adapter_config.json"));
                p.WaitForExit();
                if (adapterSource is not null) File.Copy(Path.Combine(adapterSource, "adapter_model.safetensors"), Path.Combine(dir, "adapter_model.safetensors"));
            }),
            ("1gb-unknown-tensor", dir =>
            {
                Directory.CreateDirectory(dir);
                if (adapterSource is not null) File.Copy(Path.Combine(adapterSource, "adapter_config.json"), Path.Combine(dir, "adapter_config.json"));
                var header = Encoding.UTF8.GetBytes("""{"model.unknown.weight": {"dtype": "U8", "shape": [1073741000], "data_offsets": [0, 1073741000]}}""");
                using var fs = new FileStream(Path.Combine(dir, "adapter_model.safetensors"), FileMode.Create);
                fs.Write(BitConverter.GetBytes((ulong)header.Length));
                fs.Write(header);
                fs.SetLength(8 + header.Length + 1073741000L);
            }),
            ("link-out", dir =>
            {
                Directory.CreateDirectory(dir);
                File.CreateSymbolicLink(Path.Combine(dir, "adapter_config.json"), "/etc/passwd");
                File.CreateSymbolicLink(Path.Combine(dir, "adapter_model.safetensors"), "/dev/zero");
            }),
        };
        foreach (var (name, make) in folders)
        {
            string dir = Path.Combine(adaptersDir, name);
            var stream = Stream(http, "base", tokens);
            await Task.Delay(50);
            make(dir);
            var r = await stream;
            f.ItlP99WithFolderMs[name] = P99(r.ArrivalsMs);
            await Task.Delay(500);
            var listed = JsonNode.Parse(await http.GetStringAsync("/v1/models"))!["data"]!.AsArray().Select(m => (string?)m!["id"]).ToList();
            if (listed.Contains(name)) { f.HostileFoldersListed.Add(name); f.Failures.Add($"adapters: '{name}' was loaded"); }
            if (!r.Done) f.Failures.Add($"adapters: the stream failed while '{name}' was handled");
            Directory.Delete(dir, true);
        }
        double worst = f.ItlP99WithFolderMs.Values.Max();
        s.Log.WriteLine($"hostile adapter folders: ITL p99 of a {tokens}-token stream idle {f.ItlP99IdleMs:F1} ms; while handled: " +
                        string.Join(", ", f.ItlP99WithFolderMs.Select(kv => $"{kv.Key} {kv.Value:F1} ms")) +
                        $" (worst {worst / f.ItlP99IdleMs:F2}x idle); loaded: {(f.HostileFoldersListed.Count == 0 ? "none" : string.Join(", ", f.HostileFoldersListed))}");
        if (server.Log.Contains("root:", StringComparison.Ordinal)) f.Failures.Add("adapters: a linked file's contents reached the log");
    }

    // ---- kill -9 ----

    private static async Task<ServerProcess> KillAndRestart(Settings s, Figures f, HttpClient http, ServerProcess server, List<string> serveArgs, string key,
        Dictionary<string, string> env, string adaptersDir, string? adapterSource)
    {
        async Task<string> Greedy(HttpClient client)
        {
            var resp = await client.PostAsync("/v1/completions", Body(new { model = "base", prompt = "Once upon a time", max_tokens = 24, temperature = 0, ignore_eos = true }));
            return (string)JsonNode.Parse(await resp.Content.ReadAsStringAsync())!["choices"]![0]!["text"]!;
        }
        string before = await Greedy(http);

        // an adapter half copied into the adapters folder, and a stream running, when the process is killed
        string copy = Path.Combine(adaptersDir, "copied");
        if (adapterSource is not null)
        {
            Directory.CreateDirectory(copy);
            File.Copy(Path.Combine(adapterSource, "adapter_config.json"), Path.Combine(copy, "adapter_config.json"));
            var weights = File.ReadAllBytes(Path.Combine(adapterSource, "adapter_model.safetensors"));
            File.WriteAllBytes(Path.Combine(copy, "adapter_model.safetensors"), weights[..(weights.Length / 2)]);
        }
        using var cts = new CancellationTokenSource();
        var running = Task.Run(async () => { try { await Stream(http, "base", 400, cts.Token); } catch (Exception) { } });
        await Task.Delay(300);
        server.Kill();
        cts.Cancel();
        await running;
        server.Dispose();

        var clock = Stopwatch.StartNew();
        var restarted = await ServerProcess.StartAsync(serveArgs, key, env, port: server.Url.Port);
        f.KillRestartSeconds = clock.Elapsed.TotalSeconds;
        f.KillSameOutput = await Greedy(http) == before;
        if (!f.KillSameOutput) f.Failures.Add("kill: the restarted server answers differently");
        if (adapterSource is not null)
        {
            async Task<bool> Listed() => JsonNode.Parse(await http.GetStringAsync("/v1/models"))!["data"]!.AsArray().Any(m => (string?)m!["id"] == "copied");
            await Task.Delay(500);
            bool refused = !await Listed();
            File.Copy(Path.Combine(adapterSource, "adapter_model.safetensors"), Path.Combine(copy, "adapter_model.safetensors"), overwrite: true);
            var deadline = DateTime.UtcNow.AddSeconds(15);
            while (!await Listed() && DateTime.UtcNow < deadline) await Task.Delay(100);
            f.PartialCopyRefusedThenServed = refused && await Listed();
            if (!f.PartialCopyRefusedThenServed) f.Failures.Add("kill: the half-copied adapter was not refused, or not served once complete");
        }
        s.Log.WriteLine($"kill -9 mid-stream with an adapter half copied: restarted healthy in {f.KillRestartSeconds:F1} s; same greedy output: {f.KillSameOutput}; " +
                        $"half copy refused then served once complete: {f.PartialCopyRefusedThenServed}");
        return restarted;
    }
}
