using System.Text.Json;
using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Checkpoints;
using static SmoaServe.Tests.TestTensors;

namespace SmoaServe.Cli.Tests;

[Collection("console")]
public sealed class TrainCommandTests
{
    private static readonly string[] Words =
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen"];

    /// <summary>One chat line of the code-word task: user "code i", assistant the number word.</summary>
    private static string Line(int i) =>
        $"{{\"messages\": [{{\"role\": \"user\", \"content\": \"code {i}\"}}, {{\"role\": \"assistant\", \"content\": \"{Words[i]}\"}}]}}";

    private static string WriteData(string dir, string name, IEnumerable<int> codes)
    {
        string path = Path.Combine(dir, name);
        File.WriteAllLines(path, codes.Select(Line));
        return path;
    }

    [Fact]
    public void Train_writes_an_adapter_that_loads_reports_progress_and_resumes_from_its_checkpoint()
    {
        string dir = TempDir();
        string data = WriteData(dir, "train.jsonl", Enumerable.Range(0, 12));
        string validation = WriteData(dir, "valid.jsonl", Enumerable.Range(12, 4));
        string output = Path.Combine(dir, "adapter"), checkpoint = Path.Combine(dir, "state.safetensors");
        string[] args = ["train", "--model", LlamaA, "--data", data, "--validation", validation, "--out", output, "--method", "smoa",
            "--r", "4", "--num-blocks", "2", "--target-modules", "q_proj,v_proj,down_proj", "--epochs", "2", "--batch-size", "4",
            "--micro-batch-size", "2", "--learning-rate", "1e-2", "--warmup-ratio", "0.1", "--weight-decay", "0.01", "--seed", "3",
            "--checkpoint", checkpoint];
        var (code, _, stderr) = Run(args);
        Assert.True(code == 0, stderr);
        Assert.Contains("step 6/6", stderr);
        Assert.Contains("tok/s", stderr);
        Assert.Contains("ETA", stderr);
        Assert.Contains("validation loss", stderr);
        using (var adapter = AdapterFiles.Read(output, BaseModelView.From(TestModels.LlamaA)))
        {
            Assert.Equal(AdapterKind.Smoa, adapter.Config.Kind);
            Assert.Equal(6, adapter.Modules.Count);
            Assert.All(adapter.Modules.Values, m => Assert.NotNull(m.CarriedLayout));
        }
        Assert.True(File.Exists(checkpoint));
        var firstBytes = File.ReadAllBytes(Path.Combine(output, AdapterFiles.WeightsFile));

        // the checkpoint holds the finished run: running again resumes after step 6 and writes the same adapter
        (code, _, stderr) = Run(args);
        Assert.True(code == 0, stderr);
        Assert.Contains("resumed", stderr);
        Assert.Equal(firstBytes, File.ReadAllBytes(Path.Combine(output, AdapterFiles.WeightsFile)));
    }

    [Fact]
    public void Train_names_the_line_that_is_too_long()
    {
        string dir = TempDir();
        string data = WriteData(dir, "train.jsonl", [1, 2, 3]);
        var (code, _, stderr) = Run("train", "--model", LlamaA, "--data", data, "--out", Path.Combine(dir, "a"), "--method", "lora", "--max-seq-len", "8");
        Assert.Equal(1, code);
        Assert.Contains("train.jsonl:1", stderr);
        Assert.False(Directory.Exists(Path.Combine(dir, "a")));

        (code, _, stderr) = Run("train", "--model", LlamaA, "--data", data, "--out", Path.Combine(dir, "a"), "--method", "dora");
        Assert.Equal(2, code);
        Assert.Contains("--method", stderr);
    }

    [Fact]
    public void Train_step_meets_the_reference_file()
    {
        string fixture = Path.Combine(LlamaA, "train-step-lora.safetensors");
        string output = Path.Combine(TempDir(), "out.safetensors");
        var (code, _, stderr) = Run("train-step", "--model", LlamaA, "--adapter", Path.Combine(LlamaA, "lora-adapter"), "--input", fixture,
            "--output", output, "--steps", "3", "--learning-rate", "1e-2", "--weight-decay", "0.1", "--max-grad-norm", "0.25");
        Assert.True(code == 0, stderr);
        using var actual = SafeTensorsFile.Open(output);
        using var expected = SafeTensorsFile.Open(fixture);
        Assert.Equal(expected.Names.Where(n => !n.StartsWith("input_ids") && !n.StartsWith("attention_mask") && !n.StartsWith("labels")).Order(), actual.Names.Order());
        Assert.True(MaxAbsDiff(ReadFloats(actual, "loss_steps"), ReadFloats(expected, "loss_steps")) <= 1e-4);
        var norms = ReadFloats(expected, "grad_norm_steps");
        var got = ReadFloats(actual, "grad_norm_steps");
        for (int i = 0; i < 3; i++) Assert.True(Math.Abs(got[i] - norms[i]) <= 1e-3 * norms[i]);
        foreach (var name in actual.Names.Where(n => n.StartsWith("after.")))
            Assert.True(MaxAbsDiff(ReadFloats(actual, name), ReadFloats(expected, name)) <= 5e-2, name);
    }

    [Fact]
    public void Bench_train_reports_tokens_per_second_and_the_share_of_the_gemm_peak()
    {
        var (code, stdout, stderr) = Run("bench", "train", "--synthetic", "hidden=64,layers=2,heads=4,kv_heads=2,ffn=128,vocab=256",
            "--adapter-kind", "smoa", "--r", "4", "--num-blocks", "2", "--target-modules", "all", "--batch", "2", "--seq", "16",
            "--steps", "2", "--warmup", "1", "--random-layout", "--gemm-size", "128", "--json");
        Assert.True(code == 0, stderr);
        using var json = JsonDocument.Parse(stdout.Trim().Split('\n')[^1]);
        var root = json.RootElement;
        Assert.True(root.GetProperty("tokens_per_s").GetDouble() > 0);
        Assert.True(root.GetProperty("share_of_gemm_peak").GetDouble() > 0);
        Assert.True(root.GetProperty("gemm_peak_tflops_per_s").GetDouble() > 0);
        Assert.True(root.GetProperty("adapter_flops_per_token").GetDouble() > 0);
        Assert.Equal(root.GetProperty("flops_per_token").GetDouble(), root.GetProperty("model_flops_per_token").GetDouble() + root.GetProperty("adapter_flops_per_token").GetDouble(), 3);
        Assert.Equal("smoa", root.GetProperty("adapter_kind").GetString());
        Assert.Equal(7, root.GetProperty("target_modules").GetArrayLength());
    }

    [Fact]
    public void Bench_train_serving_reports_inter_token_latency_idle_and_with_a_job_running()
    {
        var (code, stdout, stderr) = Run("bench", "train", "--serving", "--model", LlamaA, "--clients", "2", "--requests", "4", "--max-tokens", "8",
            "--examples", "16", "--json");
        Assert.True(code == 0, stderr);
        using var json = JsonDocument.Parse(stdout.Split('\n').Last(l => l.StartsWith("{\"itl", StringComparison.Ordinal)));
        var root = json.RootElement;
        Assert.Equal(0, root.GetProperty("errors").GetInt32());
        foreach (var name in new[] { "itl_p99_ms_idle", "itl_p99_ms_training", "serving_tokens_per_s_idle",
                     "serving_tokens_per_s_training", "training_tokens_per_s_within_step" })
            Assert.True(root.GetProperty(name).GetDouble() > 0, name);
        // a median gap can be ~0 (chunks of one decode step read back to back on a fast model), never above the p99
        foreach (var phase in new[] { "idle", "training" })
            Assert.InRange(root.GetProperty($"itl_p50_ms_{phase}").GetDouble(), 0, root.GetProperty($"itl_p99_ms_{phase}").GetDouble());
        double ratio = root.GetProperty("itl_p99_ms_training").GetDouble() / root.GetProperty("itl_p99_ms_idle").GetDouble();
        Assert.InRange(root.GetProperty("itl_p99_ratio").GetDouble(), ratio * 0.98, ratio * 1.02);   // from the unrounded latencies
    }

    private static (int Code, string Stdout, string Stderr) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var (oldOut, oldErr) = (Console.Out, Console.Error);
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
