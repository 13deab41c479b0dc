using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Checkpoints;
using SmoaServe.Engine.Generation;
using SmoaServe.Engine.Model;
using SmoaServe.Engine.Runner;
using SmoaServe.Text;
using SmoaServe.Training.Adapters;
using SmoaServe.Training.Data;
using SmoaServe.Training.Optim;
using Xunit.Abstractions;
using static SmoaServe.Training.Tests.TestSupport;

namespace SmoaServe.Training.Tests;

/// <summary>
/// Training works end to end on llama-a: 16 chat pairs "code i" → the number word for i. After training, the adapter
/// (written, read back and served like any other) answers at least 14 of the 16 prompts exactly by greedy decoding,
/// where the base model answers at most 2; the loss falls below half its first value.
/// </summary>
public sealed class EndToEndTests(ITestOutputHelper output)
{
    internal static readonly string[] Words =
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen"];

    internal static string Line(int i) =>
        $"{{\"messages\": [{{\"role\": \"user\", \"content\": \"code {i}\"}}, {{\"role\": \"assistant\", \"content\": \"{Words[i]}\"}}]}}";

    /// <summary>SMoA's update is ΔW = (B A) ⊙ W: with llama-a's small weights it takes a larger learning rate than LoRA (as HiRA does).</summary>
    [Theory]
    [InlineData("smoa", 1e-1)]
    [InlineData("lora", 2e-2)]
    public void Trained_adapter_answers_the_code_words(string method, double learningRate)
    {
        var model = Model;
        var tokenizer = TokenizerLoader.Load(LlamaA);
        var template = ChatTemplateLoader.Load(LlamaA)!;
        var dataset = new ChatDataset(tokenizer, template, new ChatDataOptions { MaxSequenceLength = 64 });
        var examples = Enumerable.Range(0, 16).Select(i => dataset.Tokenize(Line(i), $"pair {i}")!).ToList();
        var all = Enum.GetValues<Projection>().ToList();
        var config = method == "smoa" ? AdapterConfig.Smoa(8, 2, 16, all) : AdapterConfig.Lora(8, 16, all);
        var options = new TrainingOptions
        {
            Epochs = 60, BatchSize = 16, MicroBatchSize = 8, LearningRate = learningRate, WarmupRatio = 0.05, WeightDecay = 0.0, MaxGradNorm = 1.0,
            Seed = 7,
        };
        var clock = System.Diagnostics.Stopwatch.StartNew();
        using var adapter = TrainableAdapter.Create(model, config, seed: options.Seed);
        using var trainer = new Trainer(model, adapter, options, new TrainingData(examples, 64));
        var losses = new List<double>();
        while (!trainer.Finished) losses.Add(trainer.Step().Loss);
        output.WriteLine($"{method}: {trainer.TotalSteps} steps in {clock.Elapsed.TotalSeconds:F1} s, loss {losses[0]:F3} → {losses[^1]:F4}");

        string dir = Path.Combine(TempDir(), "trained");
        using (var definition = adapter.ToDefinition()) AdapterWriter.Write(dir, definition);
        int trained = CountCorrect(model, tokenizer, template, dir);
        int baseline = CountCorrect(model, tokenizer, template, null);
        output.WriteLine($"{method}: trained {trained}/16, base {baseline}/16 ({clock.Elapsed.TotalSeconds:F1} s)");
        Assert.True(losses[^1] < losses[0] / 2, $"loss {losses[0]} → {losses[^1]}");
        Assert.True(trained >= 14, $"trained adapter answered {trained} of 16");
        Assert.True(baseline <= 2, $"base answered {baseline} of 16");
    }

    /// <summary>Greedy answers through the serving path (registry, model runner, generator) that equal the word exactly.</summary>
    internal static int CountCorrect(LlamaModel model, ITextTokenizer tokenizer, IChatTemplate template, string? adapterDir)
    {
        using var registry = new AdapterRegistry(BaseModelView.From(model));
        if (adapterDir is not null) registry.Load("trained", adapterDir);
        using var runner = new ModelRunner(model, 1, 64, registry);
        var generator = new SequenceGenerator(runner, tokenizer);
        var eos = GenerationConfig.Load(LlamaA, model.Config).EosTokenIds.Append(tokenizer.TokenToId("<|eot_id|>")!.Value).ToArray();
        int correct = 0;
        for (int i = 0; i < 16; i++)
        {
            string prompt = template.Render([new ChatMessage("user", $"code {i}")], addGenerationPrompt: true);
            var result = generator.Generate(new SequenceRequest
            {
                PromptIds = tokenizer.Encode(prompt, addSpecialTokens: false), Sampling = new SamplingParams { MaxTokens = 8, StopTokenIds = eos.ToHashSet() },
                AdapterId = adapterDir is null ? null : "trained",
            });
            if (result.Text.Trim() == Words[i] && result.FinishReason == "stop") correct++;
        }
        return correct;
    }
}
