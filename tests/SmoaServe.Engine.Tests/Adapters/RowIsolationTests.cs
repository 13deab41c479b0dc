using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Generation;
using SmoaServe.Engine.Model;
using SmoaServe.Engine.Runner;
using SmoaServe.Engine.Scheduling;
using SmoaServe.Text;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Tests;

/// <summary>
/// A row's result depends on its own prompt and adapter only. The poisoned adapter here is the fixture LoRA with every
/// element of layer 0's gate_proj lora_B set to 3e38 (finite, so it passes a finiteness check): its rows overflow to
/// NaN. It is registered directly (bypassing the load-time bound that rejects it from files) to show that isolation
/// holds by construction, in the same step (shared GEMMs, banks, padding, masks) and across steps (KV slot reuse).
/// </summary>
public class RowIsolationTests
{
    private const int NewTokens = 12;

    /// <summary>The fixture LoRA with layer 0's gate_proj lora_B filled with 3e38.</summary>
    public static AdapterDefinition PoisonedLora(BaseModelView view)
    {
        var definition = AdapterFiles.Read(TestModels.AdapterDir("lora-adapter"), view, checkUpdateBound: false);
        definition.Modules[(0, Projection.Gate)].B[0]!.fill_(3e38f);
        return definition;
    }

    private static AdapterRegistry RegistryWithPoison(SmoaForm form)
    {
        var view = BaseModelView.From(TestModels.LlamaA);
        var registry = new AdapterRegistry(view, options: new AdapterRegistryOptions { SmoaForm = form });
        foreach (var a in TestModels.FixtureAdapters) registry.Load(a, TestModels.AdapterDir(a));
        using var bad = PoisonedLora(view);
        registry.Add("bad", bad);
        return registry;
    }

    private static int[] Prompt(int length, int offset = 0)
    {
        var (ids, _) = TestModels.Expected(Path.Combine(FixturePaths.LlamaA, "expected_base.safetensors"))[2];   // 120 tokens
        return ids.Skip(offset).Take(length).Select(i => (int)i).ToArray();
    }

    private static int Argmax(float[] logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }

    /// <summary>Greedy tokens and per-step logits of one sequence alone in a fresh runner.</summary>
    private static (List<int> Tokens, List<float[]> Logits) Solo(AdapterRegistry registry, string? adapter, int[] prompt)
    {
        using var runner = new ModelRunner(TestModels.LlamaA, slotCount: 1, maxSequenceLength: 256, registry);
        var logits = new List<float[]> { runner.Prefill(0, prompt, 0, adapter) };
        var tokens = new List<int> { Argmax(logits[0]) };
        for (int step = 1; step < NewTokens; step++)
        {
            logits.Add(runner.Decode([new DecodeRow(0, tokens[^1], prompt.Length + step - 1, adapter)])[0]);
            tokens.Add(Argmax(logits[^1]));
        }
        return (tokens, logits);
    }

    private static void AssertSame(float[] expected, float[] got, string what)
    {
        Assert.True(LogitsCheck.AllFinite(got), $"{what}: non-finite logits");
        double max = 0;
        for (int i = 0; i < expected.Length; i++) max = Math.Max(max, Math.Abs(expected[i] - got[i]));
        Assert.True(max <= 1e-4, $"{what}: max |Δlogit| = {max:g3} against the row alone");
    }

    /// <summary>
    /// The slot of a sequence that overflowed is reused by a base sequence decoding next to a longer one: the batch reads
    /// every slot's keys up to the longest position, so the new sequence's masked positions are the old sequence's NaN
    /// entries unless the slot was cleared. Its tokens and logits must be those of the base alone.
    /// </summary>
    [Theory]
    [InlineData(SmoaForm.Anchored)]
    [InlineData(SmoaForm.Folded)]
    public void A_reused_slot_carries_nothing_from_an_overflowed_sequence(SmoaForm form)
    {
        using var registry = RegistryWithPoison(form);
        var basePrompt = Prompt(6);
        var longPrompt = Prompt(40, offset: 10);
        var expected = Solo(registry, null, basePrompt);
        var expectedLong = Solo(registry, "smoa-adapter", longPrompt);

        using var runner = new ModelRunner(TestModels.LlamaA, slotCount: 2, maxSequenceLength: 256, registry);
        // the bad sequence runs longer than the base one will, in slot 0, and overflows
        var badPrompt = Prompt(30, offset: 50);
        var bad = runner.Prefill(0, badPrompt, 0, "bad");
        Assert.False(LogitsCheck.AllFinite(bad));
        for (int p = badPrompt.Length; p < badPrompt.Length + 20; p++) runner.Decode([new DecodeRow(0, 1, p, "bad")]);
        runner.FreeSlot(0);

        // slot 0: the base; slot 1: a longer SMoA sequence, so decode reads slot 0 beyond the base's own positions
        var got = new List<int> { Argmax(runner.Prefill(0, basePrompt, 0, null)) };
        var gotLong = new List<int> { Argmax(runner.Prefill(1, longPrompt, 0, "smoa-adapter")) };
        for (int step = 1; step < NewTokens; step++)
        {
            var logits = runner.Decode([
                new DecodeRow(0, got[^1], basePrompt.Length + step - 1, null),
                new DecodeRow(1, gotLong[^1], longPrompt.Length + step - 1, "smoa-adapter")]);
            AssertSame(expected.Logits[step], logits[0], $"base row, step {step}");
            AssertSame(expectedLong.Logits[step], logits[1], $"smoa row, step {step}");
            got.Add(Argmax(logits[0]));
            gotLong.Add(Argmax(logits[1]));
        }
        Assert.Equal(expected.Tokens, got);
        Assert.Equal(expectedLong.Tokens, gotLong);
    }

    /// <summary>
    /// The overflowing row shares one batched prefill (padded rows, one mask) and then every decode step with rows on the
    /// base, a LoRA, both SMoA adapters: each of those gets exactly the logits it gets alone; the bad row's are not finite.
    /// </summary>
    [Theory]
    [InlineData(SmoaForm.Anchored)]
    [InlineData(SmoaForm.Folded)]
    public void An_overflowing_row_in_the_same_batch_changes_no_other_row(SmoaForm form)
    {
        using var registry = RegistryWithPoison(form);
        var rows = new (string? Adapter, int[] Prompt)[]
        {
            ("bad", Prompt(25, offset: 3)),
            (null, Prompt(7)),
            ("lora-adapter", Prompt(12, offset: 20)),
            ("bad", Prompt(5, offset: 60)),
            ("smoa-adapter", Prompt(18, offset: 40)),
            ("smoa-adapter-layout", Prompt(9, offset: 80)),
        };
        var solo = rows.Select(r => r.Adapter == "bad" ? default : Solo(registry, r.Adapter, r.Prompt)).ToArray();

        using var runner = new ModelRunner(TestModels.LlamaA, slotCount: rows.Length, maxSequenceLength: 256, registry);
        var first = runner.PrefillBatch(rows.Select((r, slot) => new PrefillRow(slot, r.Prompt, 0, r.Adapter)).ToList());
        var last = new int[rows.Length];
        for (int i = 0; i < rows.Length; i++)
        {
            if (rows[i].Adapter == "bad") { Assert.False(LogitsCheck.AllFinite(first[i]), $"row {i}: the bad row overflows"); last[i] = 1; continue; }
            AssertSame(solo[i].Logits[0], first[i], $"row {i} ({rows[i].Adapter ?? "base"}), prefill");
            last[i] = Argmax(first[i]);
        }
        for (int step = 1; step < NewTokens; step++)
        {
            var logits = runner.Decode(rows.Select((r, slot) => new DecodeRow(slot, last[slot], r.Prompt.Length + step - 1, r.Adapter)).ToList());
            for (int i = 0; i < rows.Length; i++)
            {
                if (rows[i].Adapter == "bad") { Assert.False(LogitsCheck.AllFinite(logits[i])); continue; }
                AssertSame(solo[i].Logits[step], logits[i], $"row {i} ({rows[i].Adapter ?? "base"}), step {step}");
                last[i] = Argmax(logits[i]);
                Assert.Equal(solo[i].Tokens[step], last[i]);
            }
        }
    }

    /// <summary>
    /// The scenario end to end in the engine: 20 trials of 8 concurrent greedy completions of "hello there" (32 tokens, EOS
    /// ignored) cycling over the poisoned adapter ×4, the LoRA ×2, the base and an SMoA adapter, through the continuous-
    /// batching scheduler with 4 KV slots (so sequences queue, share steps and reuse each other's slots), in a different
    /// order each trial. Every good row equals its solo run exactly; every bad row ends with an error of its own. In odd
    /// trials the bad rows' prompt is longer, so the slots they leave hold entries past where the next occupant's own end.
    /// </summary>
    [Fact]
    public async Task Twenty_trials_of_mixed_requests_with_a_poisoned_adapter_leave_every_other_row_unchanged()
    {
        using var registry = RegistryWithPoison(SmoaForm.Anchored);
        var tokenizer = TokenizerLoader.Load(FixturePaths.LlamaA);
        var prompt = tokenizer.Encode("hello there", addSpecialTokens: true).ToArray();
        var longPrompt = tokenizer.Encode(string.Concat(Enumerable.Repeat("hello there, ", 8)), addSpecialTokens: true).ToArray();
        string?[] models = ["bad", "lora-adapter", "bad", null, "bad", "lora-adapter", "smoa-adapter", "bad"];
        var sampling = new SamplingParams { Temperature = 0, MaxTokens = 32 };

        var solo = new Dictionary<string, int[]>();
        using (var alone = new Scheduler(() => new ModelRunner(TestModels.LlamaA, 1, 256, registry), new SchedulerOptions()))
        {
            await alone.Ready;
            foreach (var m in models.Distinct().Where(m => m != "bad"))
                solo[m ?? "base"] = (await Run(alone.Submit(new GenerationRequest { PromptIds = prompt, AdapterId = m, Sampling = sampling }))).Tokens;
        }

        using var scheduler = new Scheduler(() => new ModelRunner(TestModels.LlamaA, 4, 256, registry), new SchedulerOptions { MaxPrefillChunk = 3 });
        await scheduler.Ready;
        var rng = new Random(20);
        for (int trial = 0; trial < 20; trial++)
        {
            var order = models.OrderBy(_ => rng.Next()).ToArray();
            var streams = order.Select(m => scheduler.Submit(new GenerationRequest
            {
                PromptIds = m == "bad" && trial % 2 == 1 ? longPrompt : prompt, AdapterId = m, Sampling = sampling,
            })).ToList();
            var results = await Task.WhenAll(streams.Select(Run));
            for (int i = 0; i < order.Length; i++)
            {
                if (order[i] == "bad")
                {
                    Assert.Equal(FinishReason.Error, results[i].Finish);
                    Assert.Equal(LogitsCheck.NonFiniteMessage, results[i].Error);
                    continue;
                }
                Assert.True(results[i].Finish == FinishReason.Length, $"trial {trial}, {order[i] ?? "base"}: {results[i].Finish} {results[i].Error}");
                Assert.Equal(solo[order[i] ?? "base"], results[i].Tokens);
            }
        }
    }

    private static async Task<(int[] Tokens, FinishReason? Finish, string? Error)> Run(GenerationStream stream)
    {
        var tokens = new List<int>();
        await foreach (var o in stream.Outputs.ReadAllAsync())
        {
            if (o.IsToken) tokens.Add(o.Token);
            else return (tokens.ToArray(), o.Finish, o.Error);
        }
        return (tokens.ToArray(), null, null);
    }
}
