using SmoaServe.Cli.Commands.Hostile;
using Xunit.Abstractions;

namespace SmoaServe.Cli.Tests;

/// <summary>
/// The hostile suite (`smoa bench hostile`) scaled down for CI, against a real `smoa serve` child process on llama-a:
/// fuzz classes, protocol edges, overload, a disconnect storm, a soak with the server's RSS, four concurrent 3.9 MB prompts
/// with RSS returning, hostile adapter folders under a running stream, kill -9 mid-stream during an adapter copy and a
/// restart. The full run is `smoa bench hostile --model tests/fixtures/llama-a` (README, "Reliability").
/// </summary>
public class HostileSuiteTests(ITestOutputHelper output)
{
    [Fact]
    public async Task The_server_survives_the_hostile_suite()
    {
        var log = new StringWriter();
        HostileBench.Figures f;
        try
        {
            f = await HostileBench.RunAsync(new HostileBench.Settings
            {
                Model = FixturePaths.LlamaA, Fuzz = 120, Overload = 48, Storm = 48, Soak = 400, Huge = 4, HugeMb = 3.9, StallTokens = 150, Log = log,
            });
        }
        finally { output.WriteLine(log.ToString()); }

        Assert.True(f.Passed, string.Join("\n", f.Failures));
        // fuzz: every class ran; no 5xx, no process exit, every 4xx in the OpenAI shape
        Assert.Equal(FuzzRequests.Classes.OrderBy(c => c), f.FuzzByClass.Keys.OrderBy(c => c));
        Assert.Equal(120, f.FuzzRequests);
        Assert.Equal(0, f.Fuzz5xx);
        Assert.Equal(0, f.Unshaped);
        Assert.Equal(0, f.ProcessExits);
        Assert.True(f.Fuzz4xx > 0 && f.Fuzz2xx > 0);
        Assert.DoesNotContain(f.Protocol.Keys, status => status >= 500);
        // overload: everything admitted completes, the rest is 429 with Retry-After
        Assert.Equal(48, f.OverloadCompleted + f.Overload429);
        Assert.True(f.OverloadCompleted >= 12 && f.Overload429 > 0, $"{f.OverloadCompleted} completed, {f.Overload429} refused");
        Assert.InRange(f.StormSecondsToIdle, 0, 5);
        Assert.Equal(0, f.SoakErrors);
        Assert.True(f.SoakRssEndMb - f.SoakRssStartMb < 100, $"soak RSS {f.SoakRssStartMb:F0} -> {f.SoakRssEndMb:F0} MB");
        // huge prompts: refused fast (the bench reports the figure; CI machines are shared, hence the loose bound)
        Assert.All(f.HugeStatus, s => Assert.Equal(400, s));
        Assert.All(f.HugeLatencyMs, ms => Assert.True(ms < 2000, $"a huge prompt took {ms:F0} ms"));
        Assert.InRange(f.HugeSecondsToBaseline, 0, 10);
        // hostile adapter folders: none loaded; no stall of the running stream (a FIFO read on the model thread stalled it for
        // as long as the FIFO stayed unopened, a 1 GB read for seconds; the bench reports the p99 ratio, CI machines are
        // shared and test assemblies run in parallel, hence the absolute margin)
        Assert.Empty(f.HostileFoldersListed);
        foreach (var (name, p99) in f.ItlP99WithFolderMs)
            Assert.True(p99 <= Math.Max(2 * f.ItlP99IdleMs, f.ItlP99IdleMs + 250), $"{name}: ITL p99 {p99:F1} ms vs {f.ItlP99IdleMs:F1} ms idle");
        // kill -9 mid-stream with an adapter half copied: restarts, answers the same, refuses the half copy and serves it once complete
        Assert.True(f.KillRestartSeconds > 0);
        Assert.True(f.KillSameOutput);
        Assert.True(f.PartialCopyRefusedThenServed);
    }
}
