using SmoaServe.Engine.Generation;
using SmoaServe.Engine.Scheduling;

namespace SmoaServe.Engine.Tests;

/// <summary>Work on the model thread (adapter device copies) interleaves with decode steps instead of holding them back.</summary>
public class ModelThreadWorkTests
{
    [Fact]
    public async Task Work_queued_by_work_waits_for_the_next_decode_step()
    {
        // a sequence that outlasts the test however slowly a loaded machine runs it (cancelled at the end)
        var runner = new FakeRunner(slots: 2, maxSeq: 1_000_000) { StepDelay = TimeSpan.FromMilliseconds(2) };
        using var scheduler = new Scheduler(() => runner, new SchedulerOptions());
        await scheduler.Ready;
        var stream = scheduler.Submit(new GenerationRequest { PromptIds = [1, 2, 3], Sampling = new SamplingParams { MaxTokens = 500_000 } });
        await stream.Outputs.ReadAsync();                                   // decoding has started

        // a chain of ten work items, each queueing the next from the model thread (as an adapter install does)
        var done = new TaskCompletionSource();
        void Link(int i) => scheduler.RunOnModelThread(r =>
        {
            runner.Log.Enqueue($"W{i}");
            if (i < 10) Link(i + 1); else done.SetResult();
        });
        Link(1);
        await done.Task.WaitAsync(TimeSpan.FromSeconds(20));

        var log = runner.Log.ToList();
        for (int i = 1; i < 10; i++)
        {
            int a = log.IndexOf($"W{i}"), b = log.IndexOf($"W{i + 1}");
            Assert.Contains(log.Skip(a).Take(b - a), e => e.StartsWith('D'));
        }
        stream.Cancel();
    }
}
