using System.Text;
using SmoaServe.Engine.Checkpoints;

namespace SmoaServe.Engine.Tests;

public sealed class SafeTensorsOverlapTests
{
    private static string Write(string headerJson, int dataBytes)
    {
        var header = Encoding.UTF8.GetBytes(headerJson);
        string path = Path.Combine(TestTensors.TempDir(), "overlap.safetensors");
        File.WriteAllBytes(path, BitConverter.GetBytes((ulong)header.Length).Concat(header).Concat(new byte[dataBytes]).ToArray());
        return path;
    }

    [Fact]
    public void Tensors_sharing_bytes_are_rejected_naming_both()
    {
        string path = Write("""{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}""", 24);
        var e = Assert.Throws<InvalidDataException>(() => SafeTensorsFile.Open(path));
        Assert.Contains("overlap", e.Message);
        Assert.Contains("'a'", e.Message);
        Assert.Contains("'b'", e.Message);
    }

    [Fact]
    public void Adjacent_and_empty_tensors_are_fine()
    {
        string path = Write("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"e":{"dtype":"F32","shape":[0],"data_offsets":[8,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}""", 16);
        using var f = SafeTensorsFile.Open(path);
        Assert.Equal(3, f.Names.Count);
    }
}
