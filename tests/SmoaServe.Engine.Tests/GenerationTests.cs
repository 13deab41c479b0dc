using SmoaServe.Engine.Generation;
using SmoaServe.Engine.Model;
using SmoaServe.Engine.Runner;
using SmoaServe.Text;
using static SmoaServe.Tests.TestTensors;

namespace SmoaServe.Engine.Tests;

public sealed class SamplerTests
{
    private static readonly float[] Logits = [1.0f, 3.0f, 2.0f, 3.0f, -1.0f, 0.5f];

    [Fact]
    public void Greedy_takes_the_first_maximum()
    {
        var s = new Sampler(new SamplingParams());
        Assert.Equal(1, s.Sample(Logits));
    }

    [Fact]
    public void Same_seed_gives_the_same_samples_and_different_seeds_differ()
    {
        var logits = Enumerable.Range(0, 50).Select(i => (float)Math.Sin(i)).ToArray();
        int[] Run(int seed) { var s = new Sampler(new SamplingParams { Temperature = 1.0, Seed = seed }); return Enumerable.Range(0, 40).Select(_ => s.Sample(logits)).ToArray(); }
        Assert.Equal(Run(7), Run(7));
        Assert.NotEqual(Run(7), Run(8));
    }

    [Fact]
    public void Top_k_restricts_to_the_k_best()
    {
        var s = new Sampler(new SamplingParams { Temperature = 5.0, TopK = 2, Seed = 1 });
        var seen = Enumerable.Range(0, 200).Select(_ => s.Sample(Logits)).ToHashSet();
        Assert.Subset(new HashSet<int> { 1, 3 }, seen); // the two 3.0 logits
        Assert.Equal(2, seen.Count);
    }

    [Fact]
    public void Top_p_keeps_the_smallest_set_reaching_p()
    {
        // probabilities 0.5, 0.3, 0.15, 0.05: p = 0.75 keeps the first two (0.5 < 0.75, 0.8 ≥ 0.75)
        float[] logits = [MathF.Log(0.5f), MathF.Log(0.3f), MathF.Log(0.15f), MathF.Log(0.05f)];
        var s = new Sampler(new SamplingParams { Temperature = 1.0, TopP = 0.75, Seed = 3 });
        var counts = new int[4];
        for (int i = 0; i < 4000; i++) counts[s.Sample(logits)]++;
        Assert.Equal(0, counts[2] + counts[3]);
        Assert.InRange(counts[0] / 4000.0, 0.57, 0.68); // 0.5 / 0.8 = 0.625
    }

    [Fact]
    public void Large_vocabulary_filters_keep_exactly_the_brute_force_sets()
    {
        // 20k logits with many ties: the partial selection must keep the same sets a full sort defines
        var rng = new Random(5);
        var logits = Enumerable.Range(0, 20_000).Select(_ => (float)Math.Round(rng.NextDouble() * 20, 1)).ToArray();
        var sorted = Enumerable.Range(0, logits.Length).OrderByDescending(i => logits[i]).ThenBy(i => i).ToArray();

        float kth = logits[sorted[9]];
        var topK = Enumerable.Range(0, logits.Length).Where(i => logits[i] >= kth).ToHashSet();   // the 10 best + ties
        var k = new Sampler(new SamplingParams { Temperature = 50.0, TopK = 10, Seed = 2 });
        Assert.Subset(topK, Enumerable.Range(0, 1000).Select(_ => k.Sample(logits)).ToHashSet());

        double max = logits.Max(), z = logits.Sum(l => Math.Exp(l - max)), mass = 0;
        int keep = 0;
        while (mass < 0.5 * z) mass += Math.Exp(logits[sorted[keep++]] - max);
        var topP = sorted[..keep].ToHashSet();
        var p = new Sampler(new SamplingParams { Temperature = 1.0, TopP = 0.5, Seed = 4 });
        var seen = Enumerable.Range(0, 1000).Select(_ => p.Sample(logits)).ToHashSet();
        Assert.Subset(topP, seen);
        Assert.True(seen.Count > topP.Count / 2, $"sampled {seen.Count} distinct of the {topP.Count} kept");
    }

    [Theory]
    [InlineData(0, 0.9)]
    [InlineData(2, 1.0)]
    [InlineData(0, 1.0)]
    public void Nan_logits_never_hang_and_never_pick_a_nan(int topK, double topP)
    {
        float[] allNan = [float.NaN, float.NaN, float.NaN];
        float[] someNan = [float.NaN, 1f, float.NaN, 2f];
        var task = Task.Run(() =>
        {
            var s = new Sampler(new SamplingParams { Temperature = 1.0, TopK = topK, TopP = topP, Seed = 1 });
            var picks = Enumerable.Range(0, 50).Select(_ => s.Sample(someNan)).ToHashSet();
            int any = s.Sample(allNan);
            return (picks, any);
        });
        Assert.True(task.Wait(TimeSpan.FromSeconds(10)), "sampling NaN logits did not return");
        Assert.Subset(new HashSet<int> { 1, 3 }, task.Result.picks);
        Assert.InRange(task.Result.any, 0, 2);
    }

    [Fact]
    public void Invalid_options_are_rejected()
    {
        Assert.Throws<ArgumentException>(() => new Sampler(new SamplingParams { Temperature = -1 }));
        Assert.Throws<ArgumentException>(() => new Sampler(new SamplingParams { Temperature = 1, TopP = 0 }));
        Assert.Throws<ArgumentException>(() => new Sampler(new SamplingParams { Temperature = 1, TopK = -2 }));
    }
}

public sealed class StopStringMatcherTests
{
    [Fact]
    public void Holds_back_a_possible_stop_string_and_cuts_before_it()
    {
        var m = new StopStringMatcher(["</end>"]);
        Assert.Equal("Hello ", m.Push("Hello <"));
        Assert.Equal("", m.Push("/e"));
        Assert.Equal("", m.Push("nd"));
        Assert.Equal("", m.Push(">tail"));
        Assert.True(m.Stopped);
        Assert.Equal("", m.Flush());
    }

    [Fact]
    public void Releases_held_text_that_does_not_complete_a_stop()
    {
        var m = new StopStringMatcher(["STOP"]);
        Assert.Equal("a", m.Push("aST"));
        Assert.Equal("STx", m.Push("x"));
        Assert.Equal("", m.Push("S"));
        Assert.False(m.Stopped);
        Assert.Equal("S", m.Flush());
    }
}

/// <summary>Generator with the fixture's tokenizer: EOS ids and stop strings.</summary>
public sealed class GeneratorTests : IDisposable
{
    private readonly LlamaModel _model = LlamaModel.Load(LlamaA);
    public void Dispose() => _model.Dispose();

    private static readonly int[] Prompt = [879, 707, 320, 187, 193, 403, 262];

    [Fact]
    public void Stops_after_an_eos_id_and_includes_it()
    {
        using var runner = new ModelRunner(_model, 1, 64);
        var free = new SequenceGenerator(runner).Generate(new SequenceRequest { PromptIds = Prompt, Sampling = new SamplingParams { MaxTokens = 10 } });
        int eos = free.Ids[3]; // pretend the 4th greedy token is an EOS id
        var stopped = new SequenceGenerator(runner).Generate(new SequenceRequest { PromptIds = Prompt, Sampling = new SamplingParams { MaxTokens = 10, StopTokenIds = new HashSet<int> { 5, eos } } });
        Assert.Equal(free.Ids.Take(free.Ids.ToList().IndexOf(eos) + 1), stopped.Ids);
        Assert.Equal("stop", stopped.FinishReason);
    }

    [Fact]
    public void Stop_strings_end_the_text_before_the_stop()
    {
        var tokenizer = TokenizerLoader.Load(LlamaA);
        using var runner = new ModelRunner(_model, 1, 64);
        var free = new SequenceGenerator(runner, tokenizer).Generate(new SequenceRequest { PromptIds = Prompt, Sampling = new SamplingParams { MaxTokens = 24 } });
        Assert.Equal(tokenizer.Decode(free.Ids), free.Text);
        string stop = free.Text.Substring(free.Text.Length / 2, 3);
        var stopped = new SequenceGenerator(runner, tokenizer).Generate(new SequenceRequest { PromptIds = Prompt, Sampling = new SamplingParams { MaxTokens = 24 }, StopStrings = [stop] });
        Assert.Equal(free.Text[..free.Text.IndexOf(stop, StringComparison.Ordinal)], stopped.Text);
        Assert.Equal("stop", stopped.FinishReason);
        Assert.True(stopped.Ids.Count < free.Ids.Count);
        Assert.Equal(free.Ids.Take(stopped.Ids.Count), stopped.Ids);
    }
}
