using System.Text.Json;
using SmoaServe.Engine.Generation;
using SmoaServe.Tests;
using SmoaServe.Text;
using SmoaServe.Text.Structured;

namespace SmoaServe.Engine.Tests;

/// <summary>Penalties, bias, min_p and logprobs on small rows computed by hand from each definition.</summary>
public sealed class LogitsProcessingTests
{
    [Fact]
    public void Presence_and_frequency_penalties_follow_the_OpenAI_formula()
    {
        float[] logits = [1f, 2f, 3f, 4f];
        // generated 1, 1, 3: count[1] = 2, count[3] = 1
        LogitsProcessors.ApplyPresenceFrequency(logits, new Dictionary<int, int> { [1] = 2, [3] = 1 }, presence: 0.5f, frequency: 0.25f);
        Assert.Equal([1f, 2f - 0.5f - 0.5f, 3f, 4f - 0.5f - 0.25f], logits);
        float[] negative = [1f, 1f];
        LogitsProcessors.ApplyPresenceFrequency(negative, new Dictionary<int, int> { [0] = 3 }, presence: -1f, frequency: -0.5f);
        Assert.Equal([1f + 1f + 1.5f, 1f], negative);      // negative values encourage repetition
    }

    [Fact]
    public void Repetition_penalty_divides_positive_and_multiplies_negative_logits()
    {
        float[] logits = [1f, -1f, -2f, 3f, 0f];
        LogitsProcessors.ApplyRepetitionPenalty(logits, [0, 2, 4], penalty: 2f);
        Assert.Equal([0.5f, -1f, -4f, 3f, 0f], logits);
    }

    [Fact]
    public void Logit_bias_is_added_and_clamped_to_plus_minus_100()
    {
        float[] logits = [0f, 1f, 2f];
        LogitsProcessors.ApplyLogitBias(logits, new Dictionary<int, float> { [0] = 150f, [1] = -5f, [2] = -1000f });
        Assert.Equal([100f, -4f, -98f], logits);
    }

    [Fact]
    public void Min_p_is_relative_to_the_top_probability_after_temperature()
    {
        // probabilities 0.5, 0.3, 0.04, 0.16 at T = 1
        float[] Row() => [MathF.Log(0.5f), MathF.Log(0.3f), MathF.Log(0.04f), MathF.Log(0.16f)];
        var t1 = Row();
        LogitsProcessors.ApplyMinP(t1, minP: 0.1, temperature: 1.0);       // threshold 0.05: drops 0.04
        Assert.Equal(float.NegativeInfinity, t1[2]);
        Assert.Equal(Row()[3], t1[3]);
        // T = 2: p ∝ sqrt(p) = .707, .548, .2, .4 → relative to the max: 1, .775, .283, .566
        var t2 = Row();
        LogitsProcessors.ApplyMinP(t2, minP: 0.1, temperature: 2.0);
        Assert.DoesNotContain(float.NegativeInfinity, t2);
        var t2b = Row();
        LogitsProcessors.ApplyMinP(t2b, minP: 0.3, temperature: 2.0);      // .283 < .3
        Assert.Equal([Row()[0], Row()[1], float.NegativeInfinity, Row()[3]], t2b);
    }

    [Fact]
    public void Logprobs_are_the_log_softmax_with_ties_ordered_by_id()
    {
        float[] logits = [1f, 2f, 3f];
        var lse = 3 + Math.Log(1 + Math.Exp(-1) + Math.Exp(-2));              // 3.40760596…
        var lp = TokenLogprobs.At(logits, chosen: 0, top: 2);
        Assert.Equal(0, lp.Chosen.TokenId);
        Assert.Equal(1 - lse, lp.Chosen.Logprob, 12);
        Assert.Equal([2, 1], lp.Top.Select(t => t.TokenId));
        Assert.Equal(3 - lse, lp.Top[0].Logprob, 12);
        Assert.Equal(-0.40760596444438, lp.Top[0].Logprob, 10);
        Assert.Equal(new[] { 1 - lse, 2 - lse, 3 - lse }, TokenLogprobs.LogSoftmax(logits));

        float[] ties = [0f, 5f, 1f, 5f, 5f];
        Assert.Equal([1, 3], TokenLogprobs.At(ties, 0, 2).Top.Select(t => t.TokenId));
        Assert.Equal([1, 3, 4, 2, 0], TokenLogprobs.At(ties, 0, 10).Top.Select(t => t.TokenId));
        Assert.Empty(TokenLogprobs.At(ties, 0, 0).Top);
    }

    [Fact]
    public void Counter_draws_are_deterministic_uniform_and_independent_per_step()
    {
        Assert.Equal(CounterRng.Uniform(42, 7), CounterRng.Uniform(42, 7));
        Assert.NotEqual(CounterRng.Uniform(42, 7), CounterRng.Uniform(42, 8));
        Assert.NotEqual(CounterRng.Uniform(42, 7), CounterRng.Uniform(43, 7));
        var buckets = new int[10];
        double sum = 0;
        const int n = 100_000;
        for (ulong i = 0; i < n; i++)
        {
            var u = CounterRng.Uniform(CounterRng.RowSeed(5, (int)(i % 4)), i / 4);
            Assert.InRange(u, 0.0, 0.9999999999999999);
            buckets[(int)(u * 10)]++;
            sum += u;
        }
        Assert.InRange(sum / n, 0.495, 0.505);
        Assert.All(buckets, b => Assert.InRange(b, n / 10 * 0.95, n / 10 * 1.05));
        Assert.Equal(CounterRng.RowSeed(10, 3), CounterRng.RowSeed(11, 2));
    }

    /// <summary>A deterministic stand-in for a model: logits from a hash of the sequence so far.</summary>
    static float[] FakeLogits(IReadOnlyList<int> history, int vocab = 64)
    {
        var h = 1469598103934665603UL;
        foreach (var id in history) h = (h ^ (ulong)id) * 1099511628211UL;
        var logits = new float[vocab];
        for (var i = 0; i < vocab; i++) logits[i] = (float)(CounterRng.Uniform(h, (ulong)i) * 6 - 3);
        return logits;
    }

    static SamplingParams Params(long? seed) => new()
    {
        Temperature = 0.9, TopP = 0.95, TopK = 40, MinP = 0.02, PresencePenalty = 0.3f, FrequencyPenalty = 0.2f,
        RepetitionPenalty = 1.1f, LogitBias = new Dictionary<int, float> { [3] = 2f }, Seed = seed, TopLogprobs = 3,
    };

    static List<int> Generate(SequenceSampler s, List<int> prompt, int steps)
    {
        var history = new List<int>(prompt);
        var output = new List<int>();
        for (var i = 0; i < steps; i++)
        {
            var id = s.Next(FakeLogits(history)).TokenId;
            history.Add(id);
            output.Add(id);
        }
        return output;
    }

    [Fact]
    public void N_choices_equal_independent_requests_with_consecutive_seeds_in_any_batch()
    {
        List<int> prompt = [1, 2, 3];
        const int n = 4, steps = 30;
        // one request, n = 4, stepped row-interleaved as a batch would, with an unrelated row in between
        var rows = Enumerable.Range(0, n).Select(i => new SequenceSampler(Params(100), prompt, CounterRng.RowSeed(100, i))).ToArray();
        var other = new SequenceSampler(Params(7), [9], CounterRng.RowSeed(7, 0));
        var histories = Enumerable.Range(0, n).Select(_ => new List<int>(prompt)).ToArray();
        var otherHistory = new List<int> { 9 };
        for (var step = 0; step < steps; step++)
        {
            otherHistory.Add(other.Next(FakeLogits(otherHistory)).TokenId);
            foreach (var i in Enumerable.Range(0, n).Reverse())          // another order than the request's
                histories[i].Add(rows[i].Next(FakeLogits(histories[i])).TokenId);
        }
        for (var i = 0; i < n; i++)
        {
            var single = Generate(new SequenceSampler(Params(100 + i), prompt, CounterRng.RowSeed(100 + i, 0)), prompt, steps);
            Assert.Equal(single, histories[i].Skip(prompt.Count));
        }
        Assert.NotEqual(histories[0], histories[1]);
    }

    [Fact]
    public void Sampler_applies_penalties_but_reports_raw_logprobs()
    {
        var p = new SamplingParams { Temperature = 0, FrequencyPenalty = 2f, TopLogprobs = 2 };
        var s = new SequenceSampler(p, [], 1);
        float[] logits = [3f, 2.5f, 0f];
        var first = s.Next(logits);
        Assert.Equal(0, first.TokenId);
        var second = s.Next(logits);                   // id 0 penalised by 2: 1.0 < 2.5
        Assert.Equal(1, second.TokenId);
        Assert.Equal(2.5 - TokenLogprobs.LogSumExp(logits), second.Logprobs!.Chosen.Logprob, 12);
        Assert.Equal([0, 1], second.Logprobs.Top.Select(t => t.TokenId));
        Assert.Equal([3f, 2.5f, 0f], logits);           // the caller's row is not modified
    }

    [Fact]
    public void Sampling_distribution_follows_the_penalised_softmax()
    {
        // presence 1 on id 0 (generated once): probabilities ∝ exp([2 − 1, 1, 0]) = e, e, 1
        var p = new SamplingParams { Temperature = 1, PresencePenalty = 1f, Seed = 3 };
        float[] logits = [2f, 1f, 0f];
        var counts = new int[3];
        const int trials = 20_000;
        for (var t = 0; t < trials; t++)
        {
            var s = new SequenceSampler(p, [], CounterRng.RowSeed(3, t));
            s.Record(0);
            counts[s.Next(logits).TokenId]++;
        }
        var z = 2 * Math.E + 1;
        Assert.InRange(counts[0] / (double)trials, Math.E / z - 0.015, Math.E / z + 0.015);
        Assert.InRange(counts[2] / (double)trials, 1 / z - 0.015, 1 / z + 0.015);
    }

    [Fact]
    public void Validation_names_the_parameter()
    {
        Assert.Contains("presence_penalty", Assert.Throws<ArgumentException>(() => new SamplingParams { PresencePenalty = 3f }.Validate(10)).Message);
        Assert.Contains("min_p", Assert.Throws<ArgumentException>(() => new SamplingParams { MinP = 1.5 }.Validate(10)).Message);
        Assert.Contains("logit_bias", Assert.Throws<ArgumentException>(() =>
            new SamplingParams { LogitBias = new Dictionary<int, float> { [10] = 1f } }.Validate(10)).Message);
        Assert.Contains("top_logprobs", Assert.Throws<ArgumentException>(() => new SamplingParams { TopLogprobs = 21 }.Validate(10)).Message);
        Assert.Contains("repetition_penalty", Assert.Throws<ArgumentException>(() => new SamplingParams { RepetitionPenalty = 0f }.Validate(10)).Message);
        new SamplingParams { TopLogprobs = 20, LogitBias = new Dictionary<int, float> { [9] = -100f } }.Validate(10);
    }

    [Fact]
    public void Grammar_constrained_sampling_on_random_logits_yields_schema_json()
    {
        var tok = TokenizerLoader.Load(FixturePaths.LlamaA);
        var vocab = TokenVocabulary.From(tok, [tok.EosTokenId!.Value]);
        var grammar = JsonSchemaGrammar.Compile("""{"type":"object","properties":{"city":{"type":"string","maxLength":8},"days":{"type":"integer"}},"required":["city","days"],"additionalProperties":false}""");
        var rng = new Random(1);
        for (var r = 0; r < 5; r++)
        {
            var s = new SequenceSampler(new SamplingParams { Temperature = 1, Seed = r }, [], CounterRng.RowSeed(r, 0), new GrammarMatcher(grammar, vocab));
            var ids = new List<int>();
            for (var step = 0; step < 200 && !s.Grammar!.IsTerminated; step++)
            {
                var logits = Enumerable.Range(0, 1024).Select(_ => (float)rng.NextDouble() * 4).ToArray();
                var id = s.Next(logits).TokenId;
                if (id != tok.EosTokenId) ids.Add(id);
            }
            Assert.True(s.Grammar!.IsTerminated);
            using var doc = JsonDocument.Parse(tok.Decode(ids));
            Assert.Equal(JsonValueKind.String, doc.RootElement.GetProperty("city").ValueKind);
            Assert.True(doc.RootElement.GetProperty("days").TryGetInt64(out _));
        }
    }
}
