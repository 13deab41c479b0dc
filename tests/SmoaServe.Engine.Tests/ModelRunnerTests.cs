using SmoaServe.Engine.Checkpoints;
using SmoaServe.Engine.Generation;
using SmoaServe.Engine.Model;
using SmoaServe.Engine.Runner;
using static SmoaServe.Tests.TestTensors;

namespace SmoaServe.Engine.Tests;

/// <summary>The KV-cache path: prefill + decode, chunked prefill, batched decode of rows at different positions.</summary>
public sealed class ModelRunnerTests : IDisposable
{
    private readonly LlamaModel _model = LlamaModel.Load(LlamaA);
    private readonly SafeTensorsFile _expected = SafeTensorsFile.Open(ExpectedBase);

    public void Dispose()
    {
        _model.Dispose();
        _expected.Dispose();
    }

    [Fact]
    public void Greedy_continuation_through_the_kv_cache_matches_hugging_face()
    {
        var prompt = ReadIds(_expected, "greedy_prompt").Select(x => (int)x).ToArray();
        var expected = ReadIds(_expected, "greedy_continuation").Select(x => (int)x).ToArray();
        using var runner = new ModelRunner(_model, slotCount: 2, maxSequenceLength: 64);
        var result = new SequenceGenerator(runner).Generate(new SequenceRequest { PromptIds = prompt, Slot = 1, Sampling = new SamplingParams { MaxTokens = expected.Length } });
        Assert.Equal(expected, result.Ids);
        Assert.Equal("length", result.FinishReason);
    }

    [Fact]
    public void Prefill_and_decode_logits_match_the_full_forward()
    {
        var ids = ReadIds(_expected, "ids_1");
        var reference = ReadFloats(_expected, "logits_1"); // [33, 1024] from Hugging Face
        using var runner = new ModelRunner(_model, slotCount: 1, maxSequenceLength: 64);
        var prefix = ids[..20].Select(x => (int)x).ToArray();
        var logits = runner.Prefill(0, prefix, 0, null);
        Assert.True(MaxAbsDiff(logits, reference.AsSpan(19 * 1024, 1024)) <= 1e-3);
        for (int p = 20; p < ids.Length; p++)
        {
            logits = runner.Decode([new DecodeRow(0, (int)ids[p], p, null)])[0];
            double diff = MaxAbsDiff(logits, reference.AsSpan(p * 1024, 1024));
            Assert.True(diff <= 1e-3, $"position {p}: max |Δ| {diff:E3}");
        }
    }

    [Fact]
    public void Chunked_prefill_gives_the_same_logits_as_one_prefill()
    {
        var ids = ReadIds(_expected, "ids_2").Select(x => (int)x).ToArray(); // 120 tokens
        var reference = ReadFloats(_expected, "logits_2");
        using var runner = new ModelRunner(_model, slotCount: 1, maxSequenceLength: 128);
        float[] logits = [];
        foreach (var (start, len) in new[] { (0, 50), (50, 1), (51, 40), (91, 29) })
            logits = runner.Prefill(0, ids.AsSpan(start, len), start, null);
        Assert.True(MaxAbsDiff(logits, reference.AsSpan(119 * 1024, 1024)) <= 1e-3);
    }

    [Fact]
    public void Batched_decode_of_rows_at_different_positions_equals_each_row_alone()
    {
        var seqs = new[] { ReadIds(_expected, "ids_0"), ReadIds(_expected, "ids_1"), ReadIds(_expected, "ids_2")[..70] }
            .Select(s => s.Select(x => (int)x).ToArray()).ToArray();
        // slots 3, 0, 2 (not consecutive: the gather path) and then 0, 1, 2 (the view path)
        foreach (var slots in new[] { new[] { 3, 0, 2 }, new[] { 0, 1, 2 } })
        {
            using var batched = new ModelRunner(_model, slotCount: 4, maxSequenceLength: 80);
            using var alone = new ModelRunner(_model, slotCount: 1, maxSequenceLength: 80);
            for (int i = 0; i < 3; i++) batched.Prefill(slots[i], seqs[i].AsSpan(0, seqs[i].Length - 3), 0, null);

            for (int step = 3; step >= 1; step--) // three decode steps, each row at its own position
            {
                var rows = Enumerable.Range(0, 3).Select(i => new DecodeRow(slots[i], seqs[i][^step], seqs[i].Length - step, null)).ToList();
                var logits = batched.Decode(rows);
                for (int i = 0; i < 3; i++)
                {
                    alone.FreeSlot(0);
                    alone.Prefill(0, seqs[i].AsSpan(0, seqs[i].Length - step), 0, null);
                    var single = alone.Decode([new DecodeRow(0, seqs[i][^step], seqs[i].Length - step, null)])[0];
                    double diff = MaxAbsDiff(logits[i], single);
                    Assert.True(diff < 1e-4, $"slots [{string.Join(",", slots)}] row {i} step {step}: max |Δ| {diff:E3}");
                }
            }
        }
    }

    [Fact]
    public void Invalid_calls_are_argument_errors()
    {
        using var runner = new ModelRunner(_model, slotCount: 2, maxSequenceLength: 16);
        Assert.ThrowsAny<ArgumentException>(() => runner.Prefill(2, [1, 2], 0, null));                 // no such slot
        Assert.ThrowsAny<ArgumentException>(() => runner.Prefill(0, [1, 2], 5, null));                 // gap in the cache
        Assert.ThrowsAny<ArgumentException>(() => runner.Prefill(0, new int[17], 0, null));            // too long
        Assert.ThrowsAny<ArgumentException>(() => runner.Prefill(0, [1, 5000], 0, null));              // outside vocab
        Assert.ThrowsAny<InvalidOperationException>(() => runner.Prefill(0, [1, 2], 0, "tenant-a"));   // no adapter source
        runner.Prefill(0, [1, 2], 0, null);
        Assert.ThrowsAny<ArgumentException>(() => runner.Decode([new DecodeRow(0, 3, 2, null), new DecodeRow(0, 4, 3, null)]));
        Assert.True(runner.HasAdapter(null));
        Assert.False(runner.HasAdapter("tenant-a"));
    }
}
