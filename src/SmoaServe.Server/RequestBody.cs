using System.Buffers;
using System.Text.Json;

namespace SmoaServe.Server;

/// <summary>
/// A request body read into one buffer: small bodies (the usual case) into a buffer rented from the shared pool, bodies
/// up to <see cref="LargeBufferBytes"/> into one of at most <see cref="LargeBuffersKept"/> buffers of that size kept for
/// reuse (16 MB in all; fresh large arrays cost page faults and the shared pool would keep every size a burst rented for
/// a minute per thread), larger ones into a buffer of their exact size dropped when the request ends
/// (<see cref="MemoryReclaimer"/> returns those to the system). Kestrel enforces the body size limit while it is read (413).
/// </summary>
public sealed class RequestBody : IDisposable
{
    /// <summary>Bodies up to this size use pooled buffers.</summary>
    public const int PooledMaxBytes = 256 * 1024;
    public const int LargeBufferBytes = 4 << 20;
    public const int LargeBuffersKept = 4;
    private static readonly System.Collections.Concurrent.ConcurrentBag<byte[]> LargeBuffers = new();

    private byte[] _buffer;
    private bool _pooled;      // _buffer came from the shared pool
    private int _length;
    private JsonDocument? _document;

    private RequestBody(int capacity) => (_buffer, _pooled) = Allocate(capacity);

    private static (byte[] Buffer, bool Pooled) Allocate(int size) =>
        size <= PooledMaxBytes ? (ArrayPool<byte>.Shared.Rent(Math.Max(size, 1)), true)
        : size <= LargeBufferBytes ? (LargeBuffers.TryTake(out var kept) ? kept : GC.AllocateUninitializedArray<byte>(LargeBufferBytes), false)
        : (GC.AllocateUninitializedArray<byte>(size), false);

    /// <summary>The body's bytes as JSON text (a UTF-8 byte order mark skipped).</summary>
    public ReadOnlyMemory<byte> Json
    {
        get
        {
            var bytes = new ReadOnlyMemory<byte>(_buffer, 0, _length);
            return bytes.Span.StartsWith((ReadOnlySpan<byte>)[0xEF, 0xBB, 0xBF]) ? bytes[3..] : bytes;
        }
    }

    /// <summary>
    /// Copies an untrusted stream (a multipart section) to <paramref name="target"/>, at most <paramref name="max"/>
    /// bytes: one byte more throws <paramref name="tooLarge"/>() before it is written.
    /// </summary>
    public static async Task CopyAtMostAsync(Stream body, Stream target, long max, Func<Exception> tooLarge, CancellationToken ct)
    {
        var buffer = new byte[1 << 16];
        long total = 0;
        int n;
        while ((n = await body.ReadAsync(buffer, ct)) > 0)
        {
            total += n;
            if (total > max) throw tooLarge();
            await target.WriteAsync(buffer.AsMemory(0, n), ct);
        }
    }

    /// <summary>A document parsed over this buffer, disposed with it.</summary>
    public void Own(JsonDocument document) => _document = document;

    public static async Task<RequestBody> ReadAsync(HttpRequest request, CancellationToken ct)
    {
        long? declared = request.ContentLength;
        var body = new RequestBody(declared is > 0 and <= int.MaxValue ? (int)declared.Value : 16 * 1024);
        try
        {
            while (true)
            {
                if (body._length == body._buffer.Length) body.Grow();
                int n;
                try { n = await request.Body.ReadAsync(body._buffer.AsMemory(body._length), ct); }
                // Kestrel's chunked-body parser lets arithmetic and format errors of a malformed chunk header escape
                // (and reports a bad chunk header as an IOException while the client is still there)
                catch (Exception e) when (e is OverflowException or FormatException or InvalidDataException
                    || (e is IOException and not BadHttpRequestException && !ct.IsCancellationRequested && !request.HttpContext.RequestAborted.IsCancellationRequested))
                {
                    throw new BadHttpRequestException("The request body's framing (chunked encoding) is malformed.", StatusCodes.Status400BadRequest, e);
                }
                // a Content-Length body can only end early when the client closed its side: nobody is left to read a 400
                catch (BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status400BadRequest && declared is { } d && body._length < d)
                {
                    throw new ClientClosedRequestException(e);
                }
                if (n == 0) break;
                body._length += n;
            }
            return body;
        }
        catch
        {
            body.Dispose();
            throw;
        }
    }

    private void Grow()
    {
        int size = (int)Math.Min((long)_buffer.Length * 2, Array.MaxLength);
        if (size <= _buffer.Length) throw new BadHttpRequestException("The request body is too large.", StatusCodes.Status413PayloadTooLarge);
        var (bigger, pooled) = Allocate(size);
        _buffer.AsSpan(0, _length).CopyTo(bigger);
        Release();
        (_buffer, _pooled) = (bigger, pooled);
    }

    private void Release()
    {
        if (_pooled) ArrayPool<byte>.Shared.Return(_buffer);
        else if (_buffer.Length == LargeBufferBytes && LargeBuffers.Count < LargeBuffersKept) LargeBuffers.Add(_buffer);
        _pooled = false;
    }

    public void Dispose()
    {
        _document?.Dispose();
        _document = null;
        Release();
        _buffer = [];
    }
}
