using System.Text.Json;
using SmoaServe.Cli;
using static SmoaServe.Tests.TestTensors;

namespace SmoaServe.Cli.Tests;

[Collection("console")]
public sealed class StructuredBenchCommandTests
{
    [Fact]
    public void Bench_structured_reports_grammar_and_forward_time_per_step_for_each_grammar_pass_and_batch()
    {
        var (oldOut, oldErr) = (Console.Out, Console.Error);
        var (stdout, stderr) = (new StringWriter(), new StringWriter());
        Console.SetOut(stdout);
        Console.SetError(stderr);
        int code;
        try { code = Program.Main(["bench", "structured", "--model", LlamaA, "--batch", "1,3", "--steps", "6", "--json"]); }
        finally
        {
            Console.SetOut(oldOut);
            Console.SetError(oldErr);
        }
        Assert.True(code == 0, stderr.ToString());
        var rows = JsonDocument.Parse(stdout.ToString().Trim().Split('\n')[^1]).RootElement.EnumerateArray().ToList();
        Assert.Equal(8, rows.Count); // 2 grammars × cold / warm × 2 batch sizes
        Assert.Equal(["tool-args", "json_object"], rows.Select(r => r.GetProperty("grammar").GetString()).Distinct());
        Assert.Equal([1, 3], rows.Select(r => r.GetProperty("batch").GetInt32()).Distinct().Order());
        foreach (var r in rows)
        {
            double forward = r.GetProperty("forward_ms").GetDouble(), grammar = r.GetProperty("grammar_ms").GetDouble();
            Assert.True(forward > 0 && grammar > 0, r.ToString());
            Assert.Equal(grammar / forward, r.GetProperty("grammar_over_forward").GetDouble(), 2);
        }
        Assert.Contains("grammar / forward", stderr.ToString());
    }
}
