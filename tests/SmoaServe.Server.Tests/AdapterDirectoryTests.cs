using SmoaServe.Platform.Adapters;
using System.Text.Json.Nodes;

namespace SmoaServe.Server.Tests;

public class AdapterDirectoryTests
{
    private static async Task<List<string>> ModelIds(TestHost host) =>
        JsonNode.Parse(await host.Http.GetStringAsync("/v1/models"))!["data"]!.AsArray().Select(m => (string)m!["id"]!).ToList();

    private static async Task WaitFor(Func<Task<bool>> condition, string what)
    {
        var deadline = DateTime.UtcNow.AddSeconds(15);
        while (!await condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException(what);
            await Task.Delay(25);
        }
    }

    private static void WriteAdapter(string dir)
    {
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "adapter_config.json"), "{}");
    }

    [Fact]
    public async Task Sub_directories_appear_and_disappear_while_serving()
    {
        string root = Path.Combine(Path.GetTempPath(), "smoa-adapters-" + Guid.NewGuid().ToString("N"));
        WriteAdapter(Path.Combine(root, "at-start"));
        Directory.CreateDirectory(Path.Combine(root, "broken")); // no adapter_config.json: logged, not served
        Directory.CreateDirectory(Path.Combine(root, ".hidden"));
        var runner = new FakeRunner();
        await using var host = await TestHost.StartAsync(FakeBackend.Spec(runner), o => { o.AdaptersDir = root; o.AdaptersPollSeconds = 0.05; });
        try
        {
            await WaitFor(async () => (await ModelIds(host)).Contains("at-start"), "at-start served");
            WriteAdapter(Path.Combine(root, "hot"));
            await WaitFor(async () => (await ModelIds(host)).Contains("hot"), "hot served");
            var resp = await host.Http.PostAsync("/v1/completions", new StringContent("""{"model":"hot","prompt":"x","max_tokens":2}""", System.Text.Encoding.UTF8, "application/json"));
            Assert.Equal(System.Net.HttpStatusCode.OK, resp.StatusCode);

            Directory.Delete(Path.Combine(root, "hot"), true);
            await WaitFor(async () => !(await ModelIds(host)).Contains("hot"), "hot removed");
            // unlisted first, then dropped from the engine
            await WaitFor(async () => !await host.Engine.Scheduler.RunOnModelThread(_ => runner.Adapters.Contains("hot")), "hot unloaded");
            var ids = await ModelIds(host);
            Assert.Equal(["fake-base", "at-start"], ids);

            WriteAdapter(Path.Combine(root, "broken")); // fixed: served once it changed
            await WaitFor(async () => (await ModelIds(host)).Contains("broken"), "broken fixed and served");
        }
        finally
        {
            Directory.Delete(root, true);
        }
    }

    [Fact]
    public async Task Preloaded_names_win_over_directory_names()
    {
        string root = Path.Combine(Path.GetTempPath(), "smoa-adapters-" + Guid.NewGuid().ToString("N"));
        string preload = Path.Combine(Path.GetTempPath(), "smoa-preload-" + Guid.NewGuid().ToString("N"));
        WriteAdapter(Path.Combine(root, "same"));
        WriteAdapter(preload);
        await using var host = await TestHost.StartAsync(FakeBackend.Spec(new FakeRunner()), o =>
        {
            o.AdaptersDir = root; o.AdaptersPollSeconds = 3600; o.Adapters["same"] = preload;
        });
        try
        {
            var watcher = host.App.Services.GetService(typeof(AdapterDirectoryWatcher)) as AdapterDirectoryWatcher;
            await watcher!.PollAsync();
            await watcher.PollAsync();
            Assert.True(host.Adapters.Catalog.TryGet("same", out var entry));
            Assert.Equal(AdapterOrigin.Preloaded, entry.Origin);
            Directory.Delete(Path.Combine(root, "same"), true);
            await watcher.PollAsync();
            Assert.True(host.Adapters.Catalog.TryGet("same", out _)); // a preloaded adapter is not removed with the directory
        }
        finally
        {
            Directory.Delete(root, true);
            Directory.Delete(preload, true);
        }
    }
}
