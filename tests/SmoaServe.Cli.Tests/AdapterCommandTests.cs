using System.Text.Json;
using SmoaServe.Engine.Checkpoints;
using SmoaServe.Tests;

namespace SmoaServe.Cli.Tests;

/// <summary>The adapter commands end to end through the `smoa` entry point (stdout captured).</summary>
[Collection("console")]
public class AdapterCommandTests
{
    private static (int Code, string Out) Smoa(params string[] args)
    {
        var previous = Console.Out;
        var writer = new StringWriter();
        Console.SetOut(writer);
        try { return (Program.Main(args), writer.ToString()); }
        finally { Console.SetOut(previous); }
    }

    [Theory]
    [InlineData("anchored")]
    [InlineData("folded")]
    public void BenchDecodePrintsJsonLastLine(string form)
    {
        var (code, output) = Smoa("bench", "decode", "--synthetic", "hidden=64,layers=2,heads=4,kv_heads=2,ffn=96,vocab=128",
            "--adapter-kind", "smoa", "--r", "4", "--num-blocks", "2", "--target-modules", "q_proj,v_proj,down_proj",
            "--adapters", "3", "--batch", "4", "--steps", "3", "--rounds", "1", "--prompt-len", "4", "--warmup", "1", "--json",
            "--smoa-form", form);
        Assert.Equal(0, code);
        var last = output.TrimEnd().Split('\n')[^1];
        using var json = JsonDocument.Parse(last);
        Assert.Equal(form, json.RootElement.GetProperty("smoa_form").GetString());
        // the folded form keeps no anchor copies of the base weights
        Assert.Equal(form == "folded", json.RootElement.GetProperty("anchor_bytes_shared").GetInt64() == 0);
        foreach (var key in new[] { "base_tokens_per_s", "mixed_tokens_per_s", "swap_tokens_per_s", "adapter_bytes" })
            Assert.True(json.RootElement.GetProperty(key).GetDouble() > 0, key);
        // 2 layers × (q 64×64, v 32×64, down 64×96) with r = 4, K = 2: Σ r_k (|R_k| + |C_k|) = 4 (m + n) / 2 per module
        Assert.Equal(2 * 2 * ((64 + 64) + (32 + 64) + (64 + 96)), json.RootElement.GetProperty("adapter_parameters").GetInt64());
    }

    [Fact]
    public void ScoreWithFoldedFormMatchesReference()
    {
        string dir = TestModels.TempDir();
        string adapter = TestModels.AdapterDir("smoa-adapter-layout");
        string input = Path.Combine(adapter, "expected_logits.safetensors");
        Assert.Equal(0, Smoa("score", "--model", FixturePaths.LlamaA, "--adapter", adapter, "--smoa-form", "folded", "--input", input, "--output", Path.Combine(dir, "f.safetensors")).Code);
        using var expected = SafeTensorsFile.Open(input);
        using var folded = SafeTensorsFile.Open(Path.Combine(dir, "f.safetensors"));
        for (int i = 0; i < 3; i++)
        {
            using var e = expected.ReadTensor($"logits_{i}");
            using var f = folded.ReadTensor($"logits_{i}");
            Assert.True(TestModels.MaxAbsDiff(f, e) <= TestModels.AdapterTolerance, $"score --smoa-form folded, sequence {i}");
        }
        Assert.NotEqual(0, Smoa("score", "--model", FixturePaths.LlamaA, "--adapter", adapter, "--smoa-form", "dense", "--input", input, "--output", Path.Combine(dir, "x.safetensors")).Code);
        Directory.Delete(dir, true);
    }

    [Fact]
    public void ScoreWithAdapterAndMergedCheckpointAgree()
    {
        string dir = TestModels.TempDir();
        string adapter = TestModels.AdapterDir("smoa-adapter");
        string input = Path.Combine(adapter, "expected_logits.safetensors");
        string merged = Path.Combine(dir, "merged");
        Assert.Equal(0, Smoa("score", "--model", FixturePaths.LlamaA, "--adapter", adapter, "--input", input, "--output", Path.Combine(dir, "a.safetensors")).Code);
        Assert.Equal(0, Smoa("merge", "--model", FixturePaths.LlamaA, "--adapter", adapter, "--out", merged).Code);
        Assert.Equal(0, Smoa("score", "--model", merged, "--input", input, "--output", Path.Combine(dir, "m.safetensors")).Code);

        using var expected = SafeTensorsFile.Open(input);
        using var withAdapter = SafeTensorsFile.Open(Path.Combine(dir, "a.safetensors"));
        using var mergedScores = SafeTensorsFile.Open(Path.Combine(dir, "m.safetensors"));
        for (int i = 0; i < 3; i++)
        {
            using var e = expected.ReadTensor($"logits_{i}");
            using var a = withAdapter.ReadTensor($"logits_{i}");
            using var m = mergedScores.ReadTensor($"logits_{i}");
            Assert.True(TestModels.MaxAbsDiff(a, e) <= TestModels.AdapterTolerance, $"score --adapter, sequence {i}");
            Assert.True(TestModels.MaxAbsDiff(m, a) <= TestModels.AdapterTolerance, $"merged vs --adapter, sequence {i}");
        }
        Directory.Delete(dir, true);
    }

    [Fact]
    public void BadAdapterIsAClearError()
    {
        var previous = Console.Error;
        var err = new StringWriter();
        Console.SetError(err);
        try
        {
            string dir = TestModels.TempDir();
            File.WriteAllText(Path.Combine(dir, "adapter_config.json"), """{"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]}""");
            int code = Program.Main(["merge", "--model", FixturePaths.LlamaA, "--adapter", dir, "--out", Path.Combine(dir, "out")]);
            Assert.Equal(1, code);
            Assert.Contains("adapter_model.safetensors", err.ToString());
            Directory.Delete(dir, true);
        }
        finally { Console.SetError(previous); }
    }
}
