using System.IO.MemoryMappedFiles;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Checkpoints;

/// <summary>Dtype, shape and byte range (relative to the data section) of one tensor in a safetensors file.</summary>
public sealed record SafeTensorInfo(string Name, string DType, long[] Shape, long Begin, long End)
{
    public ScalarType ScalarType => SafeTensorDTypes.ToScalarType(DType);
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
    public long ByteLength => End - Begin;
}

/// <summary>The safetensors dtype names and their element sizes / TorchSharp scalar types.</summary>
public static class SafeTensorDTypes
{
    private static readonly Dictionary<string, (ScalarType Type, int Size)> Table = new()
    {
        ["F64"] = (ScalarType.Float64, 8), ["F32"] = (ScalarType.Float32, 4), ["F16"] = (ScalarType.Float16, 2),
        ["BF16"] = (ScalarType.BFloat16, 2), ["I64"] = (ScalarType.Int64, 8), ["I32"] = (ScalarType.Int32, 4),
        ["I16"] = (ScalarType.Int16, 2), ["I8"] = (ScalarType.Int8, 1), ["U8"] = (ScalarType.Byte, 1),
        ["BOOL"] = (ScalarType.Bool, 1),
    };

    public static bool IsKnown(string dtype) => Table.ContainsKey(dtype);
    public static int ElementSize(string dtype) => Table[dtype].Size;
    public static ScalarType ToScalarType(string dtype) => Table[dtype].Type;

    public static string FromScalarType(ScalarType t) =>
        Table.FirstOrDefault(kv => kv.Value.Type == t).Key ?? throw new NotSupportedException($"safetensors: dtype {t} cannot be stored");
}

/// <summary>
/// A memory-mapped safetensors file (https://github.com/huggingface/safetensors): 8-byte little-endian header length N,
/// N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the data.
/// The header is bounded and every tensor's dtype / shape / byte range is validated against the file size when the
/// file is opened, so a malformed file is an <see cref="InvalidDataException"/> naming file and key, never a bad read.
/// Tensors are copied out of the mapping one at a time; the file is never read into managed memory as a whole.
/// </summary>
public sealed unsafe class SafeTensorsFile : IDisposable
{
    public const long MaxHeaderBytes = 100L * 1024 * 1024;
    /// <summary>Longest tensor name accepted (names are echoed in messages).</summary>
    public const int MaxNameLength = 512;

    private readonly MemoryMappedFile? _map;
    private readonly MemoryMappedViewAccessor? _view;
    private readonly byte* _base;          // start of the mapping (file offset 0)
    private readonly long _dataStart;      // 8 + N
    private readonly Dictionary<string, SafeTensorInfo> _tensors;

    public string Path { get; }
    public long FileLength { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }
    /// <summary>Tensor names in header order.</summary>
    public IReadOnlyList<string> Names { get; }

    private readonly int _maxTensors;

    private SafeTensorsFile(string path, FileStream? stream = null, int maxTensors = int.MaxValue)
    {
        _maxTensors = maxTensors;
        Path = path;
        try { FileLength = stream?.Length ?? new FileInfo(path).Length; }
        catch { stream?.Dispose(); throw; }
        if (FileLength < 8) { stream?.Dispose(); throw Bad("file is shorter than the 8-byte header length"); }
        _map = stream is null
            ? MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read)
            : MemoryMappedFile.CreateFromFile(stream, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
        try
        {
            _view = _map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            byte* p = null;
            _view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            _base = p + _view.PointerOffset;

            ulong headerLength = *(ulong*)_base; // little-endian on every platform .NET/libtorch run on here
            if (headerLength > (ulong)MaxHeaderBytes) throw Bad($"header length {headerLength} exceeds the {MaxHeaderBytes} byte limit");
            if ((long)headerLength > FileLength - 8) throw Bad($"header length {headerLength} runs past the end of the file ({FileLength} bytes)");
            _dataStart = 8 + (long)headerLength;

            var header = new ReadOnlySpan<byte>(_base + 8, (int)headerLength);
            (_tensors, Metadata, Names) = ParseHeader(header, FileLength - _dataStart);
        }
        catch
        {
            ReleaseMapping();
            throw;
        }
    }

    public static SafeTensorsFile Open(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"safetensors file not found: {path}", path);
        return new SafeTensorsFile(path);
    }

    /// <summary>
    /// Maps a file already opened by the caller (e.g. by <see cref="SafeFile.OpenRegular"/>, which checked what it is); the
    /// mapping takes over the stream. Nothing but the header is read until a tensor is asked for.
    /// </summary>
    /// <param name="maxTensors">a header listing more tensors is refused while it is parsed</param>
    public static SafeTensorsFile Open(FileStream stream, string path, int maxTensors = int.MaxValue) => new(path, stream, maxTensors);

    /// <summary>Dtype, shape and byte range of every tensor, from the header alone (no data read).</summary>
    public IReadOnlyDictionary<string, SafeTensorInfo> Infos => _tensors;

    public bool Contains(string name) => _tensors.ContainsKey(name);

    public SafeTensorInfo Info(string name) =>
        _tensors.TryGetValue(name, out var info) ? info : throw new KeyNotFoundException($"{Path}: no tensor '{name}'");

    /// <summary>Raw bytes of a tensor inside the mapping (valid while this object lives).</summary>
    public ReadOnlySpan<byte> RawBytes(string name)
    {
        var info = Info(name);
        if (info.ByteLength > int.MaxValue) throw new NotSupportedException($"{Path}: tensor '{name}' is larger than 2 GB; use ReadTensor");
        return new ReadOnlySpan<byte>(_base + _dataStart + info.Begin, (int)info.ByteLength);
    }

    /// <summary>
    /// Copies tensor <paramref name="name"/> out of the mapping into a new CPU tensor of the file's dtype, then converts
    /// it to <paramref name="toDtype"/> and moves it to <paramref name="device"/> (both optional).
    /// </summary>
    public Tensor ReadTensor(string name, ScalarType? toDtype = null, Device? device = null)
    {
        var info = Info(name);
        var raw = torch.empty(info.Shape, info.ScalarType, torch.CPU);
        try
        {
            CopyInto(raw, _base + _dataStart + info.Begin, info.ByteLength);
            return ConvertAndMove(raw, toDtype, device);
        }
        catch
        {
            raw.Dispose();
            throw;
        }
    }

    private static Tensor ConvertAndMove(Tensor raw, ScalarType? toDtype, Device? device)
    {
        bool move = device is not null && device.type != DeviceType.CPU;
        bool convert = toDtype is { } d && d != raw.dtype;
        if (!move && !convert) return raw;
        // Move first (fewer bytes to transfer when the file dtype is narrower), then convert on the device.
        Tensor result = raw;
        if (move) { var moved = result.to(device!); if (!ReferenceEquals(moved, result)) { result.Dispose(); result = moved; } }
        if (convert) { var converted = result.to_type(toDtype!.Value); if (!ReferenceEquals(converted, result)) { result.Dispose(); result = converted; } }
        return result;
    }

    /// <summary>Copies <paramref name="length"/> bytes into a contiguous CPU tensor, in chunks below 2 GB.</summary>
    private static void CopyInto(Tensor dst, byte* src, long length)
    {
        if (length == 0) return;
        const long chunkBytes = 1L << 30;
        using var flat = dst.view(-1);
        long elementSize = dst.ElementSize;
        long chunkElements = chunkBytes / elementSize;
        long total = flat.shape[0];
        for (long start = 0; start < total; start += chunkElements)
        {
            long n = Math.Min(chunkElements, total - start);
            using var part = flat.narrow(0, start, n);
            var span = part.bytes; // points at the tensor's own storage (CPU, contiguous)
            new ReadOnlySpan<byte>(src + start * elementSize, checked((int)(n * elementSize))).CopyTo(span);
        }
    }

    private (Dictionary<string, SafeTensorInfo>, IReadOnlyDictionary<string, string>, IReadOnlyList<string>) ParseHeader(ReadOnlySpan<byte> header, long dataLength)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(header.ToArray(), new JsonDocumentOptions { MaxDepth = 16 }); }
        catch (JsonException e) { throw Bad($"header is not valid JSON (line {e.LineNumber + 1}, byte {e.BytePositionInLine + 1})"); }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw Bad("header is not a JSON object");
            var tensors = new Dictionary<string, SafeTensorInfo>(StringComparer.Ordinal);
            var names = new List<string>();
            var metadata = new Dictionary<string, string>();
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (prop.Name == "__metadata__")
                {
                    if (prop.Value.ValueKind != JsonValueKind.Object) throw Bad("__metadata__ is not an object");
                    foreach (var m in prop.Value.EnumerateObject())
                        metadata[m.Name] = m.Value.ValueKind == JsonValueKind.String ? m.Value.GetString()! : m.Value.GetRawText();
                    continue;
                }
                if (names.Count >= _maxTensors) throw Bad($"more than the {_maxTensors} tensors allowed");
                if (prop.Name.Length > MaxNameLength) throw Bad($"a tensor name is longer than {MaxNameLength} characters");
                var info = ParseEntry(prop.Name, prop.Value, dataLength);
                if (!tensors.TryAdd(info.Name, info)) throw Bad($"tensor '{Printable(info.Name)}' appears twice");
                names.Add(info.Name);
            }
            CheckTiling(tensors.Values, dataLength);
            return (tensors, metadata, names);
        }
    }

    private SafeTensorInfo ParseEntry(string name, JsonElement e, long dataLength)
    {
        string shown = Printable(name);
        if (e.ValueKind != JsonValueKind.Object) throw Bad($"entry '{shown}' is not an object");
        if (!e.TryGetProperty("dtype", out var dt) || dt.ValueKind != JsonValueKind.String) throw Bad($"tensor '{shown}' has no dtype");
        string dtype = dt.GetString()!;
        if (!SafeTensorDTypes.IsKnown(dtype)) throw Bad($"tensor '{shown}' has unsupported dtype '{Short(dtype)}'");

        if (!e.TryGetProperty("shape", out var sh) || sh.ValueKind != JsonValueKind.Array) throw Bad($"tensor '{shown}' has no shape");
        if (sh.GetArrayLength() > 16) throw Bad($"tensor '{shown}' has more than 16 dimensions");
        var shape = new long[sh.GetArrayLength()];
        long elements = 1;
        int i = 0;
        foreach (var d in sh.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long v) || v < 0) throw Bad($"tensor '{shown}' has an invalid dimension {Short(d.GetRawText())}");
            shape[i++] = v;
            elements = v == 0 ? 0 : (elements > dataLength / v ? long.MaxValue : elements * v); // saturate: checked against the data size below
        }

        if (!e.TryGetProperty("data_offsets", out var off) || off.ValueKind != JsonValueKind.Array || off.GetArrayLength() != 2)
            throw Bad($"tensor '{shown}' has no data_offsets [begin, end]");
        long begin = ReadOffset(name, off[0]), end = ReadOffset(name, off[1]);
        if (begin > end) throw Bad($"tensor '{shown}' has data_offsets [{begin}, {end}] with begin after end");
        if (end > dataLength) throw Bad($"tensor '{shown}' has data_offsets [{begin}, {end}] past the end of the data ({dataLength} bytes)");
        long expected = elements == long.MaxValue ? long.MaxValue : elements * SafeTensorDTypes.ElementSize(dtype);
        if (end - begin != expected)
            throw Bad($"tensor '{shown}' ({dtype} [{string.Join(", ", shape)}]) needs {(expected == long.MaxValue ? "more than the file's" : expected.ToString())} bytes but data_offsets span {end - begin}");
        return new SafeTensorInfo(name, dtype, shape, begin, end);
    }

    /// <summary>
    /// The tensors' byte ranges tile the data section exactly, as the reference implementation requires: sorted by offset,
    /// each begins where the previous ends, the first at 0 and the last at the end of the file. So no two tensors share
    /// bytes (one region read as two tensors) and the file holds nothing but its tensors.
    /// </summary>
    private void CheckTiling(IEnumerable<SafeTensorInfo> tensors, long dataLength)
    {
        long end = 0;
        SafeTensorInfo? previous = null;
        foreach (var t in tensors.OrderBy(t => t.Begin).ThenBy(t => t.End))
        {
            if (t.Begin < end)
                throw Bad($"tensors '{Printable(previous!.Name)}' [{previous.Begin}, {previous.End}] and '{Printable(t.Name)}' [{t.Begin}, {t.End}] overlap");
            if (t.Begin > end) throw Bad($"the bytes [{end}, {t.Begin}) before tensor '{Printable(t.Name)}' belong to no tensor");
            end = t.End;
            previous = t;
        }
        if (end != dataLength) throw Bad($"the data section is {dataLength} bytes but its tensors end at {end}");
    }

    private static string Short(string text) => Printable(text.Length > 32 ? text[..32] + "…" : text);

    /// <summary>A name as shown in messages: control characters escaped.</summary>
    internal static string Printable(string name) =>
        name.Any(char.IsControl) ? string.Concat(name.Select(c => char.IsControl(c) ? $"\\u{(int)c:x4}" : c.ToString())) : name;

    private long ReadOffset(string name, JsonElement e) =>
        e.ValueKind == JsonValueKind.Number && e.TryGetInt64(out long v) && v >= 0 ? v : throw Bad($"tensor '{Printable(name)}' has an invalid data offset {Short(e.GetRawText())}");

    private InvalidDataException Bad(string message) => new($"{Path}: malformed safetensors file: {message}");

    private void ReleaseMapping()
    {
        if (_view is not null)
        {
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _view.Dispose();
        }
        _map?.Dispose();
    }

    private bool _disposed;
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        ReleaseMapping();
    }
}
