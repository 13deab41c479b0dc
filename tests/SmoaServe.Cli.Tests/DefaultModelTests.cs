using System.Text.Json;
using SmoaServe.Cli;
using SmoaServe.Cli.Commands;
using SmoaServe.Tests;
using SmoaServe.Text;

namespace SmoaServe.Cli.Tests;

/// <summary>The committed default model (models/default) and the example adapter (adapters/dictionary-card).</summary>
[Collection("console")]
public sealed class DefaultModelTests
{
    private static string Model => Path.Combine(FixturePaths.RepoRoot, "models", "default");
    private static string Adapter => Path.Combine(FixturePaths.RepoRoot, "adapters", "dictionary-card");

    [Fact]
    public void Default_model_is_a_small_complete_checkpoint()
    {
        foreach (var f in new[] { "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json", "LICENSE.WordNet" })
            Assert.True(File.Exists(Path.Combine(Model, f)), f);
        long bytes = new DirectoryInfo(Model).EnumerateFiles().Sum(f => f.Length);
        Assert.True(bytes < 40L << 20, $"models/default holds {bytes} bytes");
    }

    /// <summary>
    /// The same prompt from the adapter's training data, greedy: the base answers in a sentence, the adapter in its
    /// dictionary-card format (it changes the answer in the trained way, not just somehow).
    /// </summary>
    [Fact]
    public void Example_adapter_changes_the_greedy_answer_into_a_dictionary_card()
    {
        string question = JsonDocument.Parse(File.ReadLines(Path.Combine(Adapter, "train.jsonl")).First())
            .RootElement.GetProperty("messages")[0].GetProperty("content").GetString()!;
        var tokenizer = TokenizerLoader.Load(Model);
        var template = ChatTemplateLoader.Load(Model)!;
        var ids = tokenizer.Encode(template.Render([new ChatMessage("user", question)], addGenerationPrompt: true), addSpecialTokens: false);
        string prompt = string.Join(',', ids);

        string baseAnswer = Generate("--model", Model, "--prompt-ids", prompt, "--max-new-tokens", "16", "--json");
        string adapterAnswer = Generate("--model", Model, "--adapter", Adapter, "--prompt-ids", prompt, "--max-new-tokens", "16", "--json");
        Assert.StartsWith("Word: ", adapterAnswer);
        Assert.Contains("\nKind: ", adapterAnswer);
        Assert.DoesNotContain("Kind:", baseAnswer);
        Assert.Matches("^[A-Z][a-z]* [a-z]", baseAnswer);   // a sentence: "Numbing means ..."
    }

    [Fact]
    public void Serve_finds_the_default_model_from_the_repository_or_above_the_executable()
    {
        string elsewhere = TestTensors.TempDir();
        string? found = ServeDefaults.FindDefaultModel(elsewhere, Path.Combine(FixturePaths.RepoRoot, "src", "SmoaServe.Cli", "bin", "Release", "net10.0"));
        Assert.Equal(Path.GetFullPath(Model), Path.GetFullPath(found!));
        Assert.Null(ServeDefaults.FindDefaultModel(elsewhere, elsewhere));
    }

    [Theory]
    [InlineData("http://127.0.0.1:8000", true)]
    [InlineData("http://localhost:8000", true)]
    [InlineData("http://[::1]:8000;http://127.0.0.2:9000", true)]
    [InlineData("http://0.0.0.0:8000", false)]
    [InlineData("http://*:8000", false)]
    [InlineData("http://+:8000", false)]
    [InlineData("http://127.0.0.1:8000;http://10.0.0.5:8000", false)]
    [InlineData("http://example.com:8000", false)]
    [InlineData("not a url", false)]
    public void A_generated_key_is_only_allowed_on_loopback_addresses(string urls, bool loopback) =>
        Assert.Equal(loopback, ServeDefaults.LoopbackOnly(urls));

    private static string Generate(params string[] args)
    {
        var (oldOut, oldErr) = (Console.Out, Console.Error);
        var (stdout, stderr) = (new StringWriter(), new StringWriter());
        Console.SetOut(stdout);
        Console.SetError(stderr);
        int code;
        try { code = Program.Main(["generate", .. args]); }
        finally
        {
            Console.SetOut(oldOut);
            Console.SetError(oldErr);
        }
        Assert.True(code == 0, stderr.ToString());
        var last = stdout.ToString().TrimEnd().Split('\n')[^1];
        return JsonDocument.Parse(last).RootElement.GetProperty("text").GetString()!;
    }
}
