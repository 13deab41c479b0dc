using SmoaServe.Cli.Commands;
using SmoaServe.Tests;

namespace SmoaServe.Cli.Tests;

public class ServeBenchTests
{
    [Fact]
    public async Task Load_benchmark_measures_tokens_and_latencies_against_a_server()
    {
        await using var host = await TestHost.StartAsync(FakeBackend.Spec(new FakeRunner(slots: 4)), o =>
        {
            foreach (var name in new[] { "a1", "a2" }) o.Adapters[name] = Path.Combine(FixturePaths.LlamaA, "lora-adapter");
        });
        var f = await ServeBench.RunLoad(host.Http, ["fake-base", "a1", "a2"], clients: 4, requests: 9, maxTokens: 6, prompt: "load");
        Assert.Equal(0, f.Errors);
        Assert.Equal(9 * 6, f.Tokens);
        Assert.True(f.TokensPerSecond > 0);
        Assert.True(f.TtftP50Ms > 0 && f.TtftP99Ms >= f.TtftP50Ms);
        Assert.True(f.ItlP50Ms > 0 && f.ItlP99Ms >= f.ItlP50Ms);
    }

    [Fact]
    public void Command_runs_in_process_on_llama_a()
    {
        var output = new StringWriter();
        var stdout = Console.Out;
        Console.SetOut(output);
        int rc;
        try
        {
            rc = ServeBench.Run(["--model", FixturePaths.LlamaA, "--adapter", "lora=" + Path.Combine(FixturePaths.LlamaA, "lora-adapter"),
                "--clients", "2", "--requests", "4", "--max-tokens", "4", "--compare-single"]);
        }
        finally { Console.SetOut(stdout); }
        Assert.Equal(0, rc);
        var lines = output.ToString().Split('\n').Where(l => l.StartsWith("models=")).ToList();
        Assert.Equal(2, lines.Count);
        Assert.StartsWith("models=llama-a,lora clients=2 requests=4 errors=0: 16 tokens", lines[0]);
        Assert.StartsWith("models=llama-a clients=2 requests=4 errors=0: 16 tokens", lines[1]);
    }

    [Fact]
    public void Command_runs_on_a_synthetic_model_with_built_in_adapters()
    {
        var output = new StringWriter();
        var stdout = Console.Out;
        Console.SetOut(output);
        int rc;
        try
        {
            rc = ServeBench.Run(["--synthetic", "hidden=64,layers=1,heads=4,kv_heads=2,ffn=128,vocab=1024", "--tokenizer", FixturePaths.LlamaA,
                "--synthetic-adapters", "2", "--r", "4", "--num-blocks", "2", "--models", "syn-0,syn-1", "--clients", "2", "--requests", "4", "--max-tokens", "3"]);
        }
        finally { Console.SetOut(stdout); }
        Assert.Equal(0, rc);
        Assert.Contains("models=syn-0,syn-1 clients=2 requests=4 errors=0: 12 tokens", output.ToString());
    }
}
