using SmoaServe.Engine.Generation;
using SmoaServe.Engine.Model;
using SmoaServe.Engine.Runner;
using SmoaServe.Engine.Scheduling;
using static SmoaServe.Tests.TestTensors;

namespace SmoaServe.Engine.Tests;

/// <summary>The n choices of one prompt: the prompt prefilled once, its KV entries copied to the other rows' slots.</summary>
public sealed class PromptGroupTests : IDisposable
{
    private readonly LlamaModel _model = LlamaModel.Load(LlamaA);

    public void Dispose() => _model.Dispose();

    private static readonly int[] Prompt = Enumerable.Range(0, 21).Select(i => 40 + (i * 37) % 900).ToArray();

    [Fact]
    public void A_copied_prefix_decodes_exactly_like_its_source()
    {
        using var runner = new ModelRunner(_model, slotCount: 3, maxSequenceLength: 64);
        runner.Prefill(2, [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30], 0, null); // slot 1 was used before
        runner.FreeSlot(2);
        runner.Prefill(1, [900, 901, 902], 0, null);
        var own = runner.Prefill(0, Prompt, 0, null);
        Assert.True(runner.CopySlotPrefix(0, 1, Prompt.Length));
        Assert.Equal(Prompt.Length, runner.SlotLength(1));
        var rows = runner.Decode([new DecodeRow(0, 77, Prompt.Length, null), new DecodeRow(1, 77, Prompt.Length, null)]);
        Assert.Equal(rows[0], rows[1]);
        // and both match a fresh prefill of prompt + token in a third slot
        var fresh = runner.Prefill(2, [.. Prompt, 77], 0, null);
        Assert.True(MaxAbsDiff(rows[1], fresh) <= 1e-4);
        Assert.NotEqual(own, rows[0]);
        Assert.Throws<ArgumentOutOfRangeException>(() => runner.CopySlotPrefix(0, 1, 64));
    }

    private static async Task<List<int>> Tokens(GenerationStream s)
    {
        var tokens = new List<int>();
        await foreach (var o in s.Outputs.ReadAllAsync().WithCancellation(new CancellationTokenSource(TimeSpan.FromSeconds(60)).Token))
        {
            if (o.IsToken) tokens.Add(o.Token);
            else { Assert.Null(o.Error); return tokens; }
        }
        throw new InvalidOperationException("stream ended without a finish");
    }

    [Fact]
    public async Task Group_rows_copy_the_prompt_and_equal_independent_seeded_rows()
    {
        using var scheduler = new Scheduler(() => new ModelRunner(_model, slotCount: 4, maxSequenceLength: 96),
            new SchedulerOptions { MaxPrefillChunk = 8, MaxBatchedTokens = 16 });
        await scheduler.Ready;
        var sampling = new SamplingParams { Temperature = 1, Seed = 5, MaxTokens = 10, PresencePenalty = 0.5f };
        var group = new PromptGroup();
        var streams = Enumerable.Range(0, 3).Select(i => scheduler.Submit(new GenerationRequest
        {
            PromptIds = Prompt, Sampling = sampling, ChoiceIndex = i, Group = group,
        })).ToList();
        var together = await Task.WhenAll(streams.Select(Tokens));
        Assert.Equal(2, group.Copies);
        for (int i = 0; i < 3; i++)
        {
            var alone = await Tokens(scheduler.Submit(new GenerationRequest { PromptIds = Prompt, Sampling = sampling with { Seed = 5 + i } }));
            Assert.Equal(alone, together[i]);
        }
        Assert.True(together.Select(t => string.Join(",", t)).Distinct().Count() > 1);
    }
}
