using System.IO.Compression;
using System.Text;
using SmoaServe.Tests;
using SmoaServe.Text.Structured;

namespace SmoaServe.Text.Tests.Structured;

/// <summary>The benchmark's plumbing (not its timings): vocabularies it loads and one short run.</summary>
public class StructuredBenchTests
{
    [Fact]
    public void RunsOnTheFixtureVocabulary()
    {
        var results = StructuredBench.Run(StructuredBench.LoadVocabulary(FixturePaths.LlamaA), "llama-a", walks: 1, maxSteps: 40);
        Assert.Equal(["tool-args", "json_object", "free-text"], results.Select(r => r.Grammar));
        Assert.All(results, r => { Assert.True(r.ColdSteps > 0); Assert.True(r.CacheEntries > 0); Assert.Equal(1024, r.VocabSize); });
    }

    [Fact]
    public void TiktokenFilesInBothLayouts()
    {
        var plain = "IQ== 0\nIg== 1\nIyM= 2\n";                 // "!", "\"", "##"
        var v = StructuredBench.TiktokenVocabulary(new MemoryStream(Encoding.ASCII.GetBytes(plain)), deflated: false, out var stop);
        Assert.Equal(3, stop);
        Assert.True(v.TokenBytes(2).SequenceEqual("##"u8));
        Assert.True(v.IsStopToken(3));

        var embedded = new MemoryStream();
        using (var d = new DeflateStream(embedded, CompressionLevel.Fastest, leaveOpen: true))
            d.Write(Encoding.ASCII.GetBytes("Capacity: 3\nIQ==\nIg==\nIyM=\n"));
        embedded.Position = 0;
        var v2 = StructuredBench.TiktokenVocabulary(embedded, deflated: true, out var stop2);
        Assert.Equal(3, stop2);
        Assert.True(v2.TokenBytes(1).SequenceEqual("\""u8));
    }

    [Fact]
    public void SyntheticVocabularyHasEveryByteAndTheRequestedSize()
    {
        var v = StructuredBench.LoadVocabulary("synthetic:2000");
        Assert.Equal(2000, v.Size);
        Assert.Equal([1999], v.StopTokenIds);
        for (var b = 0; b < 256; b++) Assert.True(v.TokenBytes(b).SequenceEqual(new[] { (byte)b }));
    }
}
