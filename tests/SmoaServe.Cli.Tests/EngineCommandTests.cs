using System.Text.Json;
using SmoaServe.Cli;
using SmoaServe.Engine.Checkpoints;
using TorchSharp;
using static SmoaServe.Tests.TestTensors;

namespace SmoaServe.Cli.Tests;

/// <summary>Console output is process-wide: CLI tests run one at a time.</summary>
[CollectionDefinition("console", DisableParallelization = true)]
public sealed class ConsoleCollection;

[Collection("console")]
public sealed class EngineCommandTests
{
    [Fact]
    public void Score_writes_float32_logits_matching_hugging_face()
    {
        string output = Path.Combine(TempDir(), "out.safetensors");
        var (code, _, _) = Run("score", "--model", LlamaA, "--input", ExpectedBase, "--output", output);
        Assert.Equal(0, code);
        using var actual = SafeTensorsFile.Open(output);
        using var expected = SafeTensorsFile.Open(ExpectedBase);
        Assert.Equal(["logits_0", "logits_1", "logits_2"], actual.Names);
        for (int n = 0; n < 3; n++)
        {
            var info = actual.Info($"logits_{n}");
            Assert.Equal("F32", info.DType);
            Assert.Equal(expected.Info($"logits_{n}").Shape, info.Shape);
            Assert.True(MaxAbsDiff(ReadFloats(actual, $"logits_{n}"), ReadFloats(expected, $"logits_{n}")) <= 1e-3);
        }
    }

    [Fact]
    public void Score_rejects_ids_outside_the_vocabulary()
    {
        string dir = TempDir();
        string input = Path.Combine(dir, "in.safetensors");
        using (var ids = torch.tensor(new long[] { 1, 2, 5000 }))
            SafeTensorsWriter.Write(input, [("ids_0", ids)]);
        var (code, _, err) = Run("score", "--model", LlamaA, "--input", input, "--output", Path.Combine(dir, "out.safetensors"));
        Assert.Equal(1, code);
        Assert.Contains("5000", err);
        Assert.False(File.Exists(Path.Combine(dir, "out.safetensors")));
    }

    [Fact]
    public void Score_accepts_sequence_numbers_beyond_long()
    {
        string dir = TempDir();
        string input = Path.Combine(dir, "in.safetensors"), output = Path.Combine(dir, "out.safetensors");
        using (var ids = torch.tensor(new long[] { 1, 2, 3 }))
        using (var ids2 = torch.tensor(new long[] { 4, 5 }))
            SafeTensorsWriter.Write(input, [("ids_99999999999999999999", ids), ("ids_7", ids2)]);
        var (code, _, err) = Run("score", "--model", LlamaA, "--input", input, "--output", output);
        Assert.True(code == 0, err);
        using var actual = SafeTensorsFile.Open(output);
        Assert.Equal(["logits_7", "logits_99999999999999999999"], actual.Names);
        Assert.Equal(3, actual.Info("logits_99999999999999999999").Shape[0]);
        Assert.Equal(2, actual.Info("logits_7").Shape[0]);
    }

    [Fact]
    public void Threads_option_is_bounded_before_it_reaches_libtorch()
    {
        int before = torch.get_num_threads();
        try
        {
            var (code, _, stderr) = Run("generate", "--model", Path.Combine(TempDir(), "missing"), "--threads", "100000",
                "--prompt-ids", "1", "--max-new-tokens", "1");
            Assert.Equal(2, code);
            Assert.Contains("--threads", stderr);
            Assert.Equal(before, torch.get_num_threads());
        }
        finally { torch.set_num_threads(before); }
    }

    [Fact]
    public void Generate_json_last_line_has_the_greedy_continuation()
    {
        using var expected = SafeTensorsFile.Open(ExpectedBase);
        var prompt = string.Join(",", ReadIds(expected, "greedy_prompt"));
        var continuation = ReadIds(expected, "greedy_continuation");
        var (code, stdout, _) = Run("generate", "--model", LlamaA, "--prompt-ids", prompt, "--max-new-tokens", "24", "--json");
        Assert.Equal(0, code);
        using var json = JsonDocument.Parse(stdout.TrimEnd().Split('\n')[^1]);
        Assert.Equal(continuation, json.RootElement.GetProperty("ids").EnumerateArray().Select(e => e.GetInt64()));
        Assert.Equal(JsonValueKind.String, json.RootElement.GetProperty("text").ValueKind);
    }

    [Fact]
    public void Generate_with_prompt_text_and_seeded_sampling_is_repeatable()
    {
        string[] args = ["generate", "--model", LlamaA, "--prompt", "Hello there", "--max-new-tokens", "8", "--temperature", "0.9", "--top-p", "0.95", "--top-k", "50", "--seed", "42", "--json"];
        var first = Run(args);
        var second = Run(args);
        Assert.Equal(0, first.Code);
        Assert.Equal(first.Stdout, second.Stdout);
    }

    [Fact]
    public void Generate_synthetic_reports_tokens_per_second()
    {
        var (code, stdout, stderr) = Run("generate", "--synthetic", "hidden=32,layers=2,heads=4,kv_heads=2,ffn=64,vocab=50",
            "--prompt-ids", "1,2,3", "--max-new-tokens", "5", "--json");
        Assert.Equal(0, code);
        Assert.Equal(5, JsonDocument.Parse(stdout.TrimEnd().Split('\n')[^1]).RootElement.GetProperty("ids").GetArrayLength());
        Assert.Contains("tokens/s", stderr);
    }

    [Theory]
    [InlineData("generate", "--model", "x")]                                                      // no prompt
    [InlineData("generate", "--prompt-ids", "1", "--max-new-tokens", "3")]                        // no model
    [InlineData("generate", "--model", "x", "--prompt-ids", "1,a", "--max-new-tokens", "3")]
    [InlineData("generate", "--synthetic", "hidden=8", "--prompt", "hi", "--max-new-tokens", "3")]
    [InlineData("score", "--model", "x", "--input", "missing.safetensors", "--output", "o")]
    [InlineData("score", "--frobnicate")]
    [InlineData("generate", "--model", "x", "--prompt-ids", "1", "--max-new-tokens", "3", "--device", "tpu")]
    public void Wrong_arguments_exit_2_with_a_message(params string[] args)
    {
        var (code, _, stderr) = Run(args);
        Assert.Equal(2, code);
        Assert.StartsWith($"smoa {args[0]}: ", stderr);
        Assert.DoesNotContain("   at ", stderr); // no stack trace
    }

    [Fact]
    public void Adapter_option_on_a_directory_without_an_adapter_is_a_clear_error()
    {
        string empty = TempDir();
        var (code, _, stderr) = Run("generate", "--model", LlamaA, "--adapter", empty, "--prompt-ids", "1", "--max-new-tokens", "2");
        Assert.Equal(1, code);
        Assert.StartsWith("smoa generate: error: ", stderr);
        Assert.Contains("adapter_config.json", stderr);
        Assert.DoesNotContain("   at ", stderr);
        (code, _, stderr) = Run("generate", "--model", LlamaA, "--adapter", Path.Combine(empty, "missing"), "--prompt-ids", "1", "--max-new-tokens", "2");
        Assert.Equal(2, code);
        Assert.Contains("directory not found", stderr);
    }

    /// <summary>--adapter end to end: score with the fixture adapters against their reference logits (≤ 2e-3).</summary>
    [Theory]
    [InlineData("lora-adapter")]
    [InlineData("smoa-adapter")]
    public void Score_with_an_adapter_matches_its_reference_logits(string adapter)
    {
        string dir = Path.Combine(LlamaA, adapter);
        string expectedPath = Path.Combine(dir, "expected_logits.safetensors");
        string output = Path.Combine(TempDir(), "out.safetensors");
        var (code, _, stderr) = Run("score", "--model", LlamaA, "--adapter", dir, "--input", expectedPath, "--output", output);
        Assert.True(code == 0, stderr);
        using var actual = SafeTensorsFile.Open(output);
        using var expected = SafeTensorsFile.Open(expectedPath);
        for (int n = 0; n < 3; n++)
        {
            double diff = MaxAbsDiff(ReadFloats(actual, $"logits_{n}"), ReadFloats(expected, $"logits_{n}"));
            Assert.True(diff <= 2e-3, $"{adapter} logits_{n}: max |Δ| {diff:E3}");
        }
    }

    [Fact]
    public void Help_prints_usage_and_exits_0()
    {
        var (code, stdout, _) = Run("score", "--help");
        Assert.Equal(0, code);
        Assert.Contains("smoa score --model DIR", stdout);
        (code, stdout, _) = Run("generate", "--help");
        Assert.Equal(0, code);
        Assert.Contains("--max-new-tokens", stdout);
    }

    private static (int Code, string Stdout, string Stderr) Run(params string[] args)
    {
        var (oldOut, oldErr) = (Console.Out, Console.Error);
        var (stdout, stderr) = (new StringWriter(), new StringWriter());
        Console.SetOut(stdout);
        Console.SetError(stderr);
        try { return (Program.Main(args), stdout.ToString(), stderr.ToString()); }
        finally
        {
            Console.SetOut(oldOut);
            Console.SetError(oldErr);
        }
    }
}
