using SmoaServe.Engine.Generation;
using SmoaServe.Engine.Scheduling;

namespace SmoaServe.Engine.Tests;

/// <summary>Per-owner shares of the running batch: a flooding owner cannot starve another; preempted rows resume exactly.</summary>
public class FairShareTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    private static GenerationRequest Greedy(IReadOnlyList<int> prompt, int maxTokens, string? owner, string? adapter = null) => new()
    {
        PromptIds = prompt, AdapterId = adapter, Owner = owner,
        Sampling = new SamplingParams { Temperature = 0, MaxTokens = maxTokens, StopTokenIds = new HashSet<int>() },
    };

    private static List<int> Expected(IReadOnlyList<int> prompt, int n, string? adapter = null)
    {
        var seq = prompt.ToList();
        var result = new List<int>();
        for (int i = 0; i < n; i++) { int t = FakeRunner.PredictByHash(seq, adapter); result.Add(t); seq.Add(t); }
        return result;
    }

    private static async Task<(List<int> Tokens, GenerationOutput End, int StepsToFirst)> Collect(GenerationStream s, FakeRunner runner)
    {
        int startSteps = runner.Log.Count;
        int? first = null;
        var tokens = new List<int>();
        await foreach (var o in s.Outputs.ReadAllAsync().WithCancellation(new CancellationTokenSource(Timeout).Token))
        {
            if (!o.IsToken) return (tokens, o, first ?? -1);
            first ??= runner.Log.Count - startSteps;
            tokens.Add(o.Token);
        }
        throw new InvalidOperationException("stream ended without a finish");
    }

    private static int[] Prompt(int length, int seed) => Enumerable.Range(0, length).Select(i => 40 + (i * 13 + seed) % 80).ToArray();

    private static Scheduler Start(FakeRunner runner, SchedulerOptions options)
    {
        var s = new Scheduler(() => runner, options);
        s.Ready.Wait(Timeout);
        return s;
    }

    [Fact]
    public async Task A_flooding_owner_gives_up_a_slot_to_another_at_once_and_every_output_stays_exact()
    {
        // decode is held until B has arrived, so that A holds every slot when it does
        var gate = new SemaphoreSlim(0);
        var runner = new FakeRunner(slots: 4) { DecodeGate = gate };
        using var s = Start(runner, new SchedulerOptions { MaxQueued = 100 });
        try
        {
            var flood = Enumerable.Range(0, 24).Select(i => (Prompt: Prompt(6, i), Stream: s.Submit(Greedy(Prompt(6, i), 40, "tenant-a")))).ToList();
            // one decode step at a time until all four of A's rows decode together
            for (int i = 0; i < 2000 && !runner.Log.Contains("D4"); i++)
            {
                if (gate.CurrentCount == 0) gate.Release(1);
                await Task.Delay(5);
            }
            Assert.Contains("D4", runner.Log);

            int logAt = runner.Log.Count, bFirstLogits = -1;
            var bPrompt = Prompt(5, 99);
            // on the model thread: the runner call that computes B's first logits
            runner.Override = seq =>
            {
                if (bFirstLogits < 0 && seq.Count == bPrompt.Length && seq.SequenceEqual(bPrompt)) bFirstLogits = runner.Log.Count;
                return null;
            };
            var b = s.Submit(Greedy(bPrompt, 8, "tenant-b"));
            gate.Release(1_000_000);
            var (bTokens, bEnd, _) = await Collect(b, runner);
            int bSteps = bFirstLogits - logAt;
            string calls = string.Join(" ", runner.Log.Skip(logAt).Take(8));
            Assert.Equal(Expected(Prompt(5, 99), 8), bTokens);
            Assert.Equal(FinishReason.Length, bEnd.Finish);
            // B's first token comes within a few runner calls (one preemption, one prefill), not after A's 40-token rows
            Assert.True(bSteps is >= 1 and <= 6, $"B's first token after {bSteps} runner calls: {calls}");
            Assert.True(s.Preemptions >= 1);

            // A's preempted rows resumed by recomputing their context: every output equals the uninterrupted one
            foreach (var (prompt, stream) in flood)
            {
                var (tokens, end, _) = await Collect(stream, runner);
                Assert.Equal(FinishReason.Length, end.Finish);
                Assert.Equal(Expected(prompt, 40), tokens);
                Assert.Equal((6, 40), (end.PromptTokens, end.CompletionTokens));
            }
        }
        finally { gate.Release(1_000_000); }
    }

    [Fact]
    public async Task Without_fair_sharing_the_second_owner_waits_for_a_free_slot()
    {
        var runner = new FakeRunner(slots: 2) { StepDelay = TimeSpan.FromMilliseconds(1) };
        using var s = Start(runner, new SchedulerOptions { FairShare = false });
        var flood = Enumerable.Range(0, 2).Select(i => s.Submit(Greedy(Prompt(4, i), 30, "tenant-a"))).ToList();
        for (int i = 0; i < 500 && s.Snapshot.Running < 2; i++) await Task.Delay(5);
        var bPrompt = Prompt(4, 7);
        int bFirstLogits = -1;
        runner.Override = seq =>
        {
            if (bFirstLogits < 0 && seq.Count == bPrompt.Length && seq.SequenceEqual(bPrompt)) bFirstLogits = runner.Log.Count;
            return null;
        };
        await Collect(s.Submit(Greedy(bPrompt, 2, "tenant-b")), runner);
        // first come, first served: B's prompt runs only once one of A's rows has finished and freed its slot
        int firstFree = runner.Log.ToList().FindIndex(e => e.StartsWith('F'));
        Assert.True(firstFree >= 0 && firstFree < bFirstLogits, $"B's first logits at call {bFirstLogits}, first freed slot at {firstFree}");
        Assert.Equal(0, s.Preemptions);
        foreach (var f in flood) await Collect(f, runner);
    }

    [Fact]
    public void An_owner_over_its_queue_share_gets_429_naming_the_limit_while_others_still_queue()
    {
        var runner = new FakeRunner(slots: 1) { PrefillGate = new SemaphoreSlim(0) };
        using var s = Start(runner, new SchedulerOptions { MaxQueued = 50, MaxQueuedPerOwner = 3 });
        try
        {
            for (int i = 0; i < 4; i++) s.Submit(Greedy(Prompt(3, i), 2, "tenant-a")); // one takes the free slot, three wait
            Assert.True(runner.PrefillEntered.Wait(Timeout));
            var e = Assert.Throws<QueueFullException>(() => s.Submit(Greedy(Prompt(3, 10), 2, "tenant-a")));
            Assert.Equal("max_queued_per_tenant", e.Limit);
            Assert.Contains("max_queued_per_tenant", e.Message);
            s.Submit(Greedy(Prompt(3, 11), 2, "tenant-b"));
        }
        finally
        {
            runner.PrefillGate.Release(1000);
        }
    }
}
