using System.Text;

namespace LlamaCppSideBySide;

/// <summary>
/// A minimal GGUF v3 writer: metadata (u32, f32, string, string/f32/i32 arrays) and F32 / F16 tensors, data aligned to
/// 32 bytes. Tensor dims are written in GGUF order (ne[0] = the contiguous dimension), i.e. a row-major [out, in]
/// matrix is ne = [in, out].
/// </summary>
public sealed class GgufWriter
{
    public enum TensorType : uint { F32 = 0, F16 = 1 }

    private const uint Alignment = 32;
    private readonly List<(string Key, Action<BinaryWriter> Write)> _metadata = [];
    private readonly List<(string Name, long[] RowMajorShape, TensorType Type, byte[] Data)> _tensors = [];

    public void U32(string key, uint v) => _metadata.Add((key, w => { w.Write(4u); w.Write(v); }));
    public void F32(string key, float v) => _metadata.Add((key, w => { w.Write(6u); w.Write(v); }));
    public void Str(string key, string v) => _metadata.Add((key, w => { w.Write(8u); WriteString(w, v); }));

    public void Strings(string key, IReadOnlyList<string> values) => _metadata.Add((key, w =>
    {
        w.Write(9u); w.Write(8u); w.Write((ulong)values.Count);
        foreach (var v in values) WriteString(w, v);
    }));

    public void Floats(string key, IReadOnlyList<float> values) => _metadata.Add((key, w =>
    {
        w.Write(9u); w.Write(6u); w.Write((ulong)values.Count);
        foreach (var v in values) w.Write(v);
    }));

    public void Ints(string key, IReadOnlyList<int> values) => _metadata.Add((key, w =>
    {
        w.Write(9u); w.Write(5u); w.Write((ulong)values.Count);
        foreach (var v in values) w.Write(v);
    }));

    /// <param name="rowMajorShape">the tensor's shape as PyTorch writes it ([out, in] for a weight)</param>
    /// <param name="data">its elements, row-major, in <paramref name="type"/> (little-endian)</param>
    public void Tensor(string name, long[] rowMajorShape, TensorType type, byte[] data)
    {
        long elements = rowMajorShape.Aggregate(1L, (a, b) => a * b);
        if (data.Length != elements * (type == TensorType.F32 ? 4 : 2)) throw new ArgumentException($"{name}: {data.Length} bytes for {elements} {type} elements");
        _tensors.Add((name, rowMajorShape, type, data));
    }

    /// <summary>Writes the file (temp + rename).</summary>
    public void Save(string path)
    {
        string temp = path + ".tmp";
        using (var stream = File.Create(temp))
        using (var w = new BinaryWriter(stream, Encoding.UTF8))
        {
            w.Write(0x46554747u);                  // "GGUF"
            w.Write(3u);                           // version
            w.Write((ulong)_tensors.Count);
            w.Write((ulong)_metadata.Count);
            foreach (var (key, write) in _metadata) { WriteString(w, key); write(w); }
            ulong offset = 0;
            foreach (var (name, shape, type, data) in _tensors)
            {
                WriteString(w, name);
                w.Write((uint)shape.Length);
                foreach (long d in shape.Reverse()) w.Write((ulong)d);
                w.Write((uint)type);
                w.Write(offset);
                offset = Align(offset + (ulong)data.Length);
            }
            Pad(w);
            foreach (var (_, _, _, data) in _tensors) { w.Write(data); Pad(w); }
            w.Flush();
            stream.Flush(flushToDisk: true);
        }
        File.Move(temp, path, overwrite: true);
    }

    private static ulong Align(ulong v) => (v + Alignment - 1) / Alignment * Alignment;

    private static void Pad(BinaryWriter w)
    {
        long pos = w.BaseStream.Position;
        long padded = (long)Align((ulong)pos);
        for (; pos < padded; pos++) w.Write((byte)0);
    }

    private static void WriteString(BinaryWriter w, string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)bytes.Length);
        w.Write(bytes);
    }
}
