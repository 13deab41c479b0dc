using System.Net.Sockets;
using System.Text;

namespace SmoaServe.Tests;

/// <summary>An HTTP/1.1 exchange over a raw socket, for requests no HTTP client would send.</summary>
public static class RawHttp
{
    public sealed record Response(int Status, string Head, string Body, bool Answered)
    {
        public string? Header(string name) => Head.Split("\r\n").Skip(1)
            .Select(l => l.Split(':', 2)).Where(p => p.Length == 2 && p[0].Trim().Equals(name, StringComparison.OrdinalIgnoreCase))
            .Select(p => p[1].Trim()).FirstOrDefault();
    }

    /// <summary>Sends <paramref name="request"/> (and closes the sending side when <paramref name="halfClose"/>), reads
    /// the first response until the server closes the connection or the response is complete. No answer: status 0.</summary>
    public static async Task<Response> SendAsync(Uri server, byte[] request, TimeSpan? timeout = null, bool halfClose = false)
    {
        using var client = new TcpClient();
        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(10));
        await client.ConnectAsync(server.Host, server.Port, cts.Token);
        var stream = client.GetStream();
        try
        {
            await stream.WriteAsync(request, cts.Token);
            if (halfClose) client.Client.Shutdown(SocketShutdown.Send);
        }
        catch (IOException) { /* the server may close before reading everything */ }
        var received = new MemoryStream();
        var buffer = new byte[16384];
        try
        {
            while (true)
            {
                int n = await stream.ReadAsync(buffer, cts.Token);
                if (n == 0) break;
                received.Write(buffer, 0, n);
                if (Complete(received.ToArray())) break;
            }
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or SocketException) { }
        return Parse(received.ToArray());
    }

    public static Task<Response> SendAsync(Uri server, string request, TimeSpan? timeout = null, bool halfClose = false) =>
        SendAsync(server, Encoding.Latin1.GetBytes(request), timeout, halfClose);

    private static bool Complete(byte[] data)
    {
        var text = Encoding.Latin1.GetString(data);
        int end = text.IndexOf("\r\n\r\n", StringComparison.Ordinal);
        if (end < 0) return false;
        var r = Parse(data);
        if (r.Header("Content-Length") is { } cl && long.TryParse(cl, out long length)) return Encoding.Latin1.GetByteCount(r.Body) >= length;
        if (r.Header("Transfer-Encoding") is { } te && te.Contains("chunked")) return text.EndsWith("\r\n0\r\n\r\n", StringComparison.Ordinal);
        return false;
    }

    private static Response Parse(byte[] data)
    {
        var text = Encoding.Latin1.GetString(data);
        int end = text.IndexOf("\r\n\r\n", StringComparison.Ordinal);
        if (end < 0) return new Response(0, text, "", data.Length > 0);
        string head = text[..end], body = text[(end + 4)..];
        var statusLine = head.Split("\r\n")[0].Split(' ');
        int status = statusLine.Length > 1 && int.TryParse(statusLine[1], out int s) ? s : 0;
        var r = new Response(status, head, body, true);
        if (r.Header("Transfer-Encoding") is { } te && te.Contains("chunked")) body = Dechunk(body);
        return r with { Body = Encoding.UTF8.GetString(Encoding.Latin1.GetBytes(body)) };
    }

    private static string Dechunk(string body)
    {
        var sb = new StringBuilder();
        int pos = 0;
        while (pos < body.Length)
        {
            int eol = body.IndexOf("\r\n", pos, StringComparison.Ordinal);
            if (eol < 0) break;
            if (!int.TryParse(body[pos..eol].Split(';')[0], System.Globalization.NumberStyles.HexNumber, null, out int size) || size == 0) break;
            if (eol + 2 + size > body.Length) { sb.Append(body[(eol + 2)..]); break; }
            sb.Append(body, eol + 2, size);
            pos = eol + 2 + size + 2;
        }
        return sb.ToString();
    }
}
