using SmoaServe.Engine.Generation;
using SmoaServe.Engine.Scheduling;

namespace SmoaServe.Engine.Tests;

public class SchedulerTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);

    private static GenerationRequest Greedy(IReadOnlyList<int> prompt, int maxTokens, string? adapter = null, CancellationToken ct = default) => new()
    {
        PromptIds = prompt, AdapterId = adapter, CancellationToken = ct,
        Sampling = new SamplingParams { Temperature = 0, MaxTokens = maxTokens, StopTokenIds = new HashSet<int> { FakeTokenizer.Eos } },
    };

    private static async Task<(List<int> Tokens, GenerationOutput End)> Collect(GenerationStream s)
    {
        var tokens = new List<int>();
        await foreach (var o in s.Outputs.ReadAllAsync().WithCancellation(new CancellationTokenSource(Timeout).Token))
        {
            if (o.IsToken) tokens.Add(o.Token);
            else return (tokens, o);
        }
        throw new InvalidOperationException("stream ended without a finish");
    }

    /// <summary>What the fake model predicts greedily for a prompt, computed without the scheduler.</summary>
    private static List<int> Expected(IReadOnlyList<int> prompt, int n, string? adapter = null)
    {
        var seq = prompt.ToList();
        var result = new List<int>();
        for (int i = 0; i < n; i++) { int t = FakeRunner.PredictByHash(seq, adapter); result.Add(t); seq.Add(t); }
        return result;
    }

    private static Scheduler Start(FakeRunner runner, SchedulerOptions? options = null)
    {
        var s = new Scheduler(() => runner, options ?? new SchedulerOptions());
        s.Ready.Wait(Timeout);
        return s;
    }

    private static int[] Prompt(int length, int seed = 0) => Enumerable.Range(0, length).Select(i => 40 + (i * 13 + seed) % 80).ToArray();

    [Fact]
    public async Task Greedy_output_matches_the_model_and_ends_with_length()
    {
        var runner = new FakeRunner();
        using var s = Start(runner);
        var (tokens, end) = await Collect(s.Submit(Greedy(Prompt(5), 12)));
        Assert.Equal(Expected(Prompt(5), 12), tokens);
        Assert.Equal(FinishReason.Length, end.Finish);
        Assert.Equal((5, 12), (end.PromptTokens, end.CompletionTokens));
        Assert.Contains("F0", runner.Log);
    }

    [Fact]
    public async Task Requests_join_and_leave_the_running_batch_at_every_step()
    {
        var runner = new FakeRunner { StepDelay = TimeSpan.FromMilliseconds(5) };
        using var s = Start(runner);
        var a = s.Submit(Greedy(Prompt(4, 1), 30));
        var first = await a.Outputs.ReadAsync(); // A is decoding
        var b = s.Submit(Greedy(Prompt(6, 2), 5, adapter: null));
        var c = s.Submit(Greedy(Prompt(3, 3), 10));
        var rb = await Collect(b);
        var rc = await Collect(c);
        var ra = await Collect(a);
        Assert.Equal(Expected(Prompt(4, 1), 30), new[] { first.Token }.Concat(ra.Tokens));
        Assert.Equal(Expected(Prompt(6, 2), 5), rb.Tokens);
        Assert.Equal(Expected(Prompt(3, 3), 10), rc.Tokens);
        var decodes = runner.Log.Where(l => l.StartsWith('D')).Select(l => int.Parse(l[1..])).ToList();
        // batch grows from 1 to 3 while A runs, then shrinks as B and C leave: both directions happen between steps
        int peak = decodes.IndexOf(3);
        Assert.True(peak > 0 && decodes[..peak].Contains(1), string.Join(",", decodes));
        Assert.Contains(2, decodes[peak..]);
        Assert.Equal(1, decodes[^1]);
    }

    [Fact]
    public async Task Rows_of_one_batch_use_different_adapters()
    {
        var runner = new FakeRunner { StepDelay = TimeSpan.FromMilliseconds(2) };
        runner.Adapters.UnionWith(["x", "y"]);
        using var s = Start(runner);
        var streams = new[] { (string?)null, "x", "y" }.Select(ad => (ad, s.Submit(Greedy(Prompt(5), 16, ad)))).ToList();
        foreach (var (ad, st) in streams) Assert.Equal(Expected(Prompt(5), 16, ad), (await Collect(st)).Tokens);
        Assert.Contains("D3", runner.Log);
        Assert.NotEqual(Expected(Prompt(5), 16, "x"), Expected(Prompt(5), 16, "y"));
    }

    [Fact]
    public async Task Cancellation_takes_effect_at_the_next_step_and_frees_the_slot()
    {
        var runner = new FakeRunner(slots: 1) { DecodeGate = new SemaphoreSlim(2) };
        using var s = Start(runner);
        using var cts = new CancellationTokenSource();
        var a = s.Submit(Greedy(Prompt(4), 200, ct: cts.Token));
        var b = s.Submit(Greedy(Prompt(4, 5), 3)); // waits for the only slot
        for (int i = 0; i < 3; i++) await a.Outputs.ReadAsync(); // prefill token + 2 decodes; the third decode waits at the gate
        cts.Cancel();
        runner.DecodeGate.Release(1000);
        var ra = await Collect(a);
        Assert.Equal(FinishReason.Cancelled, ra.End.Finish);
        Assert.True(ra.Tokens.Count <= 1, $"{ra.Tokens.Count} tokens after the cancel"); // at most the step in progress
        var rb = await Collect(b);
        Assert.Equal(Expected(Prompt(4, 5), 3), rb.Tokens); // B reused slot 0 with a clean cache
        Assert.Equal(2, runner.Log.Count(l => l == "F0"));
        Assert.Equal(0, s.InFlight);
    }

    [Fact]
    public async Task A_full_queue_rejects_new_requests()
    {
        var runner = new FakeRunner(slots: 1) { PrefillGate = new SemaphoreSlim(0) };
        using var s = Start(runner, new SchedulerOptions { MaxQueued = 1 });
        var a = s.Submit(Greedy(Prompt(4), 2));
        Assert.True(runner.PrefillEntered.Wait(Timeout)); // A holds the slot, the model thread is inside its prefill
        var b = s.Submit(Greedy(Prompt(4, 1), 2));        // queued
        Assert.Throws<QueueFullException>(() => s.Submit(Greedy(Prompt(4, 2), 2)));
        runner.PrefillGate.Release(100);
        Assert.Equal(FinishReason.Length, (await Collect(a)).End.Finish);
        Assert.Equal(FinishReason.Length, (await Collect(b)).End.Finish);
        var c = s.Submit(Greedy(Prompt(4, 2), 2)); // room again
        Assert.Equal(FinishReason.Length, (await Collect(c)).End.Finish);
    }

    [Fact]
    public async Task Requests_that_a_free_slot_takes_do_not_count_against_the_queue_limit()
    {
        var runner = new FakeRunner(slots: 2) { PrefillGate = new SemaphoreSlim(0) };
        using var s = Start(runner, new SchedulerOptions { MaxQueued = 0 });
        var a = s.Submit(Greedy(Prompt(4), 2)); // idle scheduler, free slots: accepted even with no queue
        var b = s.Submit(Greedy(Prompt(4, 1), 2));
        Assert.True(runner.PrefillEntered.Wait(Timeout));
        Assert.Throws<QueueFullException>(() => s.Submit(Greedy(Prompt(4, 2), 2))); // both slots taken, no queue
        runner.PrefillGate.Release(100);
        Assert.Equal(FinishReason.Length, (await Collect(a)).End.Finish);
        Assert.Equal(FinishReason.Length, (await Collect(b)).End.Finish);
        var c = s.Submit(Greedy(Prompt(4, 2), 2)); // the slots are free again
        Assert.Equal(FinishReason.Length, (await Collect(c)).End.Finish);
    }

    [Fact]
    public async Task Chunked_prefill_interleaves_with_decode()
    {
        var runner = new FakeRunner { StepDelay = TimeSpan.FromMilliseconds(1) };
        using var s = Start(runner, new SchedulerOptions { MaxBatchedTokens = 8, MaxPrefillChunk = 6 });
        var a = s.Submit(Greedy(Prompt(4), 40));
        await a.Outputs.ReadAsync(); // A is decoding in slot 0
        var b = s.Submit(Greedy(Prompt(50, 7), 4));
        var rb = await Collect(b);
        await Collect(a);
        Assert.Equal(Expected(Prompt(50, 7), 4), rb.Tokens);
        var log = runner.Log.ToList();
        var chunks = log.Select((l, i) => (l, i)).Where(x => x.l.StartsWith("P1:")).ToList();
        Assert.Equal(50, chunks.Sum(x => int.Parse(x.l[3..])));
        Assert.All(chunks, x => Assert.InRange(int.Parse(x.l[3..]), 1, 6)); // ≤ chunk size and ≤ budget − decode rows
        Assert.True(chunks.Count >= 9);
        for (int k = 1; k < chunks.Count; k++) // A decoded between every two chunks of B's prompt
            Assert.Contains(log.Skip(chunks[k - 1].i).Take(chunks[k].i - chunks[k - 1].i), l => l.StartsWith('D'));
    }

    [Fact]
    public async Task Eos_ends_with_stop_and_is_counted()
    {
        var runner = new FakeRunner { Override = seq => seq.Count >= 7 ? FakeTokenizer.Eos : null };
        using var s = Start(runner);
        var (tokens, end) = await Collect(s.Submit(Greedy(Prompt(4), 50)));
        Assert.Equal(FinishReason.Stop, end.Finish);
        Assert.Equal(FakeTokenizer.Eos, tokens[^1]);
        Assert.Equal(4, tokens.Count); // prompt 4 + 3 generated reach 7, then EOS
    }

    [Fact]
    public async Task Sequence_stops_at_the_context_length()
    {
        var runner = new FakeRunner(maxSeq: 12);
        using var s = Start(runner);
        var (tokens, end) = await Collect(s.Submit(Greedy(Prompt(10), 100)));
        Assert.Equal(FinishReason.Length, end.Finish);
        Assert.Equal(2, tokens.Count);
        Assert.Throws<ArgumentException>(() => s.Submit(Greedy(Prompt(12), 1)));
        Assert.Throws<ArgumentException>(() => s.Submit(Greedy([5, 999], 1))); // outside the vocabulary
        Assert.Throws<ArgumentException>(() => s.Submit(Greedy([], 1)));
    }

    [Fact]
    public async Task Waiting_prompts_are_prefilled_together_in_one_batch()
    {
        var runner = new FakeRunner(slots: 4) { PrefillGate = new SemaphoreSlim(0) };
        runner.Adapters.Add("x");
        using var s = Start(runner);
        var first = s.Submit(Greedy(Prompt(4), 3));
        Assert.True(runner.PrefillEntered.Wait(Timeout));             // the model thread is inside the first prefill
        var others = new[] { s.Submit(Greedy(Prompt(5, 1), 3, "x")), s.Submit(Greedy(Prompt(7, 2), 3)), s.Submit(Greedy(Prompt(3, 3), 3, "x")) };
        runner.PrefillGate.Release(1000);
        Assert.Equal(Expected(Prompt(4), 3), (await Collect(first)).Tokens);
        Assert.Equal(Expected(Prompt(5, 1), 3, "x"), (await Collect(others[0])).Tokens);
        Assert.Equal(Expected(Prompt(7, 2), 3), (await Collect(others[1])).Tokens);
        Assert.Equal(Expected(Prompt(3, 3), 3, "x"), (await Collect(others[2])).Tokens);
        Assert.Contains("B3", runner.Log);                               // the three waiting prompts in one forward
    }

    [Fact]
    public async Task A_failed_prefill_batch_is_retried_row_by_row()
    {
        var runner = new FakeRunner(slots: 4) { PrefillGate = new SemaphoreSlim(0), FailOnAdapter = "bad" };
        runner.Adapters.Add("bad");
        using var s = Start(runner);
        var first = s.Submit(Greedy(Prompt(4), 3));
        Assert.True(runner.PrefillEntered.Wait(Timeout));
        var good1 = s.Submit(Greedy(Prompt(5, 1), 3));
        var bad = s.Submit(Greedy(Prompt(6, 2), 3, "bad"));
        var good2 = s.Submit(Greedy(Prompt(3, 3), 3));
        runner.PrefillGate.Release(1000);
        Assert.Equal(Expected(Prompt(4), 3), (await Collect(first)).Tokens);
        Assert.Equal(Expected(Prompt(5, 1), 3), (await Collect(good1)).Tokens);
        Assert.Equal(FinishReason.Error, (await Collect(bad)).End.Finish);
        Assert.Equal(Expected(Prompt(3, 3), 3), (await Collect(good2)).Tokens);
        Assert.Contains("B3", runner.Log);
    }

    [Fact]
    public async Task A_runner_failure_fails_only_its_requests()
    {
        var runner = new FakeRunner { FailOnAdapter = "bad" };
        runner.Adapters.Add("bad");
        using var s = Start(runner);
        var bad = await Collect(s.Submit(Greedy(Prompt(4), 5, "bad")));
        Assert.Equal(FinishReason.Error, bad.End.Finish);
        Assert.Contains("injected", bad.End.Error);
        var missing = await Collect(s.Submit(Greedy(Prompt(4), 5, "nope")));
        Assert.Equal(FinishReason.Error, missing.End.Finish);
        var good = await Collect(s.Submit(Greedy(Prompt(4), 5)));
        Assert.Equal(Expected(Prompt(4), 5), good.Tokens);
    }

    [Fact]
    public async Task Unloading_an_adapter_ends_only_its_running_sequences()
    {
        var runner = new FakeRunner { DecodeGate = new SemaphoreSlim(1) };
        runner.Adapters.Add("gone");
        using var s = Start(runner);
        var a = s.Submit(Greedy(Prompt(4), 50, "gone"));
        var b = s.Submit(Greedy(Prompt(4), 5));
        await a.Outputs.ReadAsync();
        var removal = s.RunOnModelThread(r => runner.Adapters.Remove("gone"));
        runner.DecodeGate.Release(1000);
        await removal;
        var ra = await Collect(a);
        Assert.Equal(FinishReason.Error, ra.End.Finish);
        Assert.Contains("unloaded", ra.End.Error);
        Assert.Equal(Expected(Prompt(4), 5), (await Collect(b)).Tokens);
    }

    [Fact]
    public async Task A_row_that_fails_decode_is_isolated_from_the_rest_of_the_batch()
    {
        var runner = new FakeRunner { DecodeGate = new SemaphoreSlim(0), FailDecodeOnAdapter = "bad" };
        runner.Adapters.Add("bad");
        using var s = Start(runner);
        var good = s.Submit(Greedy(Prompt(5), 8));
        var bad = s.Submit(Greedy(Prompt(6), 8, "bad"));
        runner.DecodeGate.Release(1000); // both are prefilled before the first decode, so they share it
        Assert.Equal(Expected(Prompt(5), 8), (await Collect(good)).Tokens);
        var rb = await Collect(bad);
        Assert.Equal(FinishReason.Error, rb.End.Finish);
        Assert.Equal(1, rb.Tokens.Count); // the token sampled after prefill
        Assert.Contains("D2", runner.Log);
    }

    [Fact]
    public async Task Work_runs_on_the_model_thread_between_steps()
    {
        var runner = new FakeRunner();
        using var s = Start(runner);
        await Collect(s.Submit(Greedy(Prompt(3), 2)));
        int thread = await s.RunOnModelThread(_ => Environment.CurrentManagedThreadId);
        Assert.Equal(runner.ModelThreadId, thread);
        await Assert.ThrowsAsync<InvalidOperationException>(() => s.RunOnModelThread(_ => throw new InvalidOperationException("x")));
    }

    [Fact]
    public async Task Dispose_cancels_in_flight_requests_and_disposes_the_runner()
    {
        var runner = new FakeRunner(slots: 1) { StepDelay = TimeSpan.FromMilliseconds(2) };
        var s = Start(runner);
        var a = s.Submit(Greedy(Prompt(4), 10_000 / 50));
        var b = s.Submit(Greedy(Prompt(4), 5));
        await a.Outputs.ReadAsync();
        s.Dispose();
        Assert.Equal(FinishReason.Cancelled, (await Collect(a)).End.Finish);
        Assert.Equal(FinishReason.Cancelled, (await Collect(b)).End.Finish);
        Assert.True(runner.Disposed);
        Assert.Throws<InvalidOperationException>(() => s.Submit(Greedy(Prompt(4), 5)));
    }
}
