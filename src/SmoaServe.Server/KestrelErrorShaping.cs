using System.Buffers;
using System.IO.Pipelines;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Connections;

namespace SmoaServe.Server;

/// <summary>
/// Gives Kestrel's own refusals the API's error shape. Requests Kestrel cannot parse (a bad request line, header or body
/// framing, an oversized header or URL, an unsupported HTTP version) are answered by Kestrel before any middleware
/// runs, with an empty body. This connection middleware watches what Kestrel writes: a response head with status ≥ 400,
/// no Content-Type, "Content-Length: 0" and "Connection: close" — exactly the shape of Kestrel's refusals, never of the
/// application's errors, which always carry a JSON body — is replaced by the same status (505 becomes 400: the client
/// sent something this server does not speak) with an OpenAI-style JSON error body. Everything else passes unchanged.
/// </summary>
public static class KestrelErrorShaping
{
    /// <summary>For <c>ListenOptions.Use</c>.</summary>
    public static ConnectionDelegate Middleware(ConnectionDelegate next) => async connection =>
    {
        var original = connection.Transport;
        var output = new ShapingStream(original.Output.AsStream(leaveOpen: true));
        connection.Transport = new DuplexPipe(original.Input, PipeWriter.Create(output, new StreamPipeWriterOptions(leaveOpen: true)));
        try { await next(connection); }
        finally { connection.Transport = original; }
    };

    /// <summary>The replacement of a Kestrel refusal head, or null when <paramref name="head"/> is anything else.</summary>
    public static byte[]? Reshape(ReadOnlySpan<byte> head)
    {
        if (!head.StartsWith("HTTP/1.1 "u8) || !head.EndsWith("\r\n\r\n"u8) || head.Length > 4096) return null;
        string text = Encoding.Latin1.GetString(head);
        var lines = text[..^4].Split("\r\n");
        if (lines[0].Length < 12 || !int.TryParse(lines[0].AsSpan(9, 3), out int status) || status < 400) return null;
        bool emptyBody = false, closing = false;
        foreach (var line in lines.Skip(1))
        {
            if (line.StartsWith("Content-Type:", StringComparison.OrdinalIgnoreCase)) return null;
            if (line.Equals("Content-Length: 0", StringComparison.OrdinalIgnoreCase)) emptyBody = true;
            if (line.Equals("Connection: close", StringComparison.OrdinalIgnoreCase)) closing = true;
        }
        if (!emptyBody || !closing) return null;

        var (shown, message, code) = Describe(status);
        var body = JsonSerializer.SerializeToUtf8Bytes(new ApiException(shown, message, shown >= 500 ? "server_error" : "invalid_request_error", null, code).ToResponse(), Json.Options);
        var sb = new StringBuilder();
        sb.Append($"HTTP/1.1 {shown} {ReasonPhrase(shown)}\r\n");
        foreach (var line in lines.Skip(1))
            if (!line.StartsWith("Content-Length:", StringComparison.OrdinalIgnoreCase)) sb.Append(line).Append("\r\n");
        sb.Append("Content-Type: application/json\r\n");
        sb.Append($"Content-Length: {body.Length}\r\n\r\n");
        return [.. Encoding.Latin1.GetBytes(sb.ToString()), .. body];
    }

    private static (int Status, string Message, string Code) Describe(int status) => status switch
    {
        400 => (400, "The request is not valid HTTP/1.1: its request line, a header or the body's framing (Content-Length, chunked encoding) is malformed.", "bad_http_request"),
        405 => (405, "This method is not allowed here.", "method_not_allowed"),
        408 => (408, "The request was not received in time.", "request_timeout"),
        411 => (411, "The request needs a Content-Length or chunked body.", "length_required"),
        413 => (413, "The request body is too large.", "request_too_large"),
        414 => (414, "The request line (URL) is too long.", "uri_too_long"),
        431 => (431, "The request headers are too large.", "headers_too_large"),
        505 => (400, "This HTTP version is not supported (HTTP/1.1 only).", "http_version_not_supported"),
        _ when status < 500 => (status, $"The request was refused ({status}).", "bad_http_request"),
        _ => (status, $"The request failed ({status}).", "server_error"),
    };

    private static string ReasonPhrase(int status) => status switch
    {
        400 => "Bad Request", 405 => "Method Not Allowed", 408 => "Request Timeout", 411 => "Length Required",
        413 => "Payload Too Large", 414 => "URI Too Long", 431 => "Request Header Fields Too Large", 500 => "Internal Server Error",
        _ => "Error",
    };

    private sealed class DuplexPipe(PipeReader input, PipeWriter output) : IDuplexPipe
    {
        public PipeReader Input { get; } = input;
        public PipeWriter Output { get; } = output;
    }

    /// <summary>The connection's output: each write that is a whole Kestrel refusal head is replaced.</summary>
    private sealed class ShapingStream(Stream inner) : Stream
    {
        public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            if (buffer.Length is > 12 and < 4096 && buffer.Span[9] is (byte)'4' or (byte)'5' && buffer.Span.StartsWith("HTTP/1.1 "u8) && Reshape(buffer.Span) is { } replaced)
                buffer = replaced;
            await inner.WriteAsync(buffer, cancellationToken);
        }

        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();
        public override void Write(byte[] buffer, int offset, int count) => WriteAsync(buffer, offset, count).GetAwaiter().GetResult();
        public override Task FlushAsync(CancellationToken cancellationToken) => inner.FlushAsync(cancellationToken);
        public override void Flush() => inner.Flush();
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        protected override void Dispose(bool disposing)
        {
            if (disposing) inner.Dispose();
            base.Dispose(disposing);
        }
    }
}
