using System.Text;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Checkpoints;

/// <summary>Writes safetensors files atomically (temp file in the same folder, then rename).</summary>
public static class SafeTensorsWriter
{
    public static void Write(string path, IEnumerable<(string Name, Tensor Tensor)> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = tensors.ToList();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (name, _) in list)
        {
            if (name == "__metadata__") throw new ArgumentException("safetensors: '__metadata__' is not a valid tensor name");
            if (!seen.Add(name)) throw new ArgumentException($"safetensors: tensor '{name}' given twice");
        }

        byte[] header = BuildHeader(list, metadata);
        string fullPath = System.IO.Path.GetFullPath(path);
        string dir = System.IO.Path.GetDirectoryName(fullPath)!;
        Directory.CreateDirectory(dir);
        string temp = System.IO.Path.Combine(dir, $".{System.IO.Path.GetFileName(fullPath)}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var fs = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
            {
                fs.Write(BitConverter.GetBytes((ulong)header.Length)); // little-endian
                fs.Write(header);
                foreach (var (_, t) in list) WriteData(fs, t);
                fs.Flush(flushToDisk: true);
            }
            File.Move(temp, fullPath, overwrite: true);
        }
        catch
        {
            try { File.Delete(temp); } catch { /* best effort */ }
            throw;
        }
    }

    /// <summary>JSON header padded with spaces to a multiple of 8 bytes (as the reference implementation does).</summary>
    private static byte[] BuildHeader(List<(string Name, Tensor Tensor)> list, IReadOnlyDictionary<string, string>? metadata)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                w.WriteStartObject("__metadata__");
                foreach (var (k, v) in metadata) w.WriteString(k, v);
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (var (name, t) in list)
            {
                long bytes = t.NumberOfElements * t.ElementSize;
                w.WriteStartObject(name);
                w.WriteString("dtype", SafeTensorDTypes.FromScalarType(t.dtype));
                w.WriteStartArray("shape");
                foreach (long d in t.shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + bytes);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += bytes;
            }
            w.WriteEndObject();
        }
        var json = ms.ToArray();
        int padded = (json.Length + 7) / 8 * 8;
        var header = new byte[padded];
        json.CopyTo(header, 0);
        for (int i = json.Length; i < padded; i++) header[i] = (byte)' ';
        return header;
    }

    private static void WriteData(Stream s, Tensor t)
    {
        using var scope = torch.NewDisposeScope();
        var cpu = t.device_type == DeviceType.CPU ? t : t.cpu();
        var contiguous = cpu.contiguous().view(-1);
        const long chunkBytes = 1L << 28;
        long elementSize = t.ElementSize;
        long chunk = Math.Max(1, chunkBytes / elementSize);
        long total = contiguous.shape[0];
        for (long start = 0; start < total; start += chunk)
        {
            long n = Math.Min(chunk, total - start);
            s.Write(contiguous.narrow(0, start, n).bytes);
        }
    }
}
