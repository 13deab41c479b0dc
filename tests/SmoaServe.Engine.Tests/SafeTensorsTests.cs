using System.Text;
using SmoaServe.Engine.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;
using static SmoaServe.Tests.TestTensors;

namespace SmoaServe.Engine.Tests;

public sealed class SafeTensorsTests
{
    [Fact]
    public void Reads_the_fixture_header_and_tensors()
    {
        using var f = SafeTensorsFile.Open(ExpectedBase);
        var info = f.Info("logits_2");
        Assert.Equal("F32", info.DType);
        Assert.Equal(new long[] { 120, 1024 }, info.Shape);
        Assert.Equal(new long[] { 7 }, f.Info("ids_0").Shape);
        using var ids = f.ReadTensor("ids_0");
        Assert.Equal(ScalarType.Int64, ids.dtype);
        Assert.Throws<KeyNotFoundException>(() => f.Info("nope"));
    }

    [Fact]
    public void Write_then_read_round_trips_every_dtype_and_metadata()
    {
        string path = Path.Combine(TempDir(), "t.safetensors");
        using var scope = torch.NewDisposeScope();
        var f32 = torch.arange(12, dtype: ScalarType.Float32).view(3, 4) / 7;
        var tensors = new List<(string, Tensor)>
        {
            ("f32", f32), ("bf16", f32.to_type(ScalarType.BFloat16)), ("f16", f32.to_type(ScalarType.Float16)),
            ("i64", torch.tensor(new long[] { -5, 1L << 40 })), ("i32", torch.tensor(new[] { 7, -8 })),
            ("u8", torch.tensor(new byte[] { 0, 255 })), ("bool", torch.tensor(new[] { true, false, true })),
            ("empty", torch.zeros(0, 3)), ("scalar", torch.tensor(3.5f)), ("strided", f32.t()),
        };
        SafeTensorsWriter.Write(path, tensors, new Dictionary<string, string> { ["format"] = "pt", ["note"] = "x" });
        Assert.Empty(Directory.GetFiles(Path.GetDirectoryName(path)!, "*.tmp")); // temp file renamed away

        using var file = SafeTensorsFile.Open(path);
        Assert.Equal(tensors.Select(t => t.Item1), file.Names);
        Assert.Equal("x", file.Metadata["note"]);
        foreach (var (name, expected) in tensors)
        {
            var actual = file.ReadTensor(name);
            Assert.Equal(expected.dtype, actual.dtype);
            Assert.Equal(expected.shape, actual.shape);
            Assert.True(expected.eq(actual).all().item<bool>(), name);
        }
        var converted = file.ReadTensor("bf16", ScalarType.Float32);
        Assert.Equal(ScalarType.Float32, converted.dtype);
        Assert.True(converted.allclose(f32, rtol: 1e-2, atol: 1e-2));
    }

    [Fact]
    public void Header_length_beyond_the_file_is_a_clear_error()
    {
        string path = WriteRaw(BitConverter.GetBytes(1000UL).Concat(Encoding.ASCII.GetBytes("{}")).ToArray());
        var e = Assert.Throws<InvalidDataException>(() => SafeTensorsFile.Open(path));
        Assert.Contains("header length", e.Message);
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void Huge_header_length_is_rejected_before_reading()
    {
        string path = WriteRaw(BitConverter.GetBytes(ulong.MaxValue - 3).Concat(new byte[16]).ToArray());
        Assert.Contains("exceeds", Assert.Throws<InvalidDataException>(() => SafeTensorsFile.Open(path)).Message);
    }

    [Fact]
    public void File_shorter_than_eight_bytes_is_rejected()
    {
        Assert.Throws<InvalidDataException>(() => SafeTensorsFile.Open(WriteRaw([1, 2, 3])));
    }

    [Theory]
    [InlineData("""{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,64]}}""", "past the end")]
    [InlineData("""{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}""", "needs 16 bytes")]
    [InlineData("""{"w":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}}""", "begin after end")]
    [InlineData("""{"w":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}}""", "invalid dimension")]
    [InlineData("""{"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,16]}}""", "bytes but data_offsets span")]
    [InlineData("""{"w":{"dtype":"Q4","shape":[4],"data_offsets":[0,16]}}""", "unsupported dtype")]
    [InlineData("""{"w":{"dtype":"F32","shape":[4]}}""", "data_offsets")]
    [InlineData("""{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,-16]}}""", "invalid data offset")]
    [InlineData("""[1,2,3]""", "not a JSON object")]
    [InlineData("""{"w": """, "not valid JSON")]
    public void Malformed_headers_are_clear_errors(string header, string expected)
    {
        var h = Encoding.UTF8.GetBytes(header);
        string path = WriteRaw(BitConverter.GetBytes((ulong)h.Length).Concat(h).Concat(new byte[16]).ToArray());
        var e = Assert.Throws<InvalidDataException>(() => SafeTensorsFile.Open(path));
        Assert.Contains(expected, e.Message);
        Assert.Contains(path, e.Message);
    }

    private static string WriteRaw(byte[] bytes)
    {
        string path = Path.Combine(TempDir(), "bad.safetensors");
        File.WriteAllBytes(path, bytes);
        return path;
    }
}
