using System.Net;
using System.Text;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using SmoaServe.Engine.Hosting;

namespace SmoaServe.Server.Tests;

public class ServerLifecycleTests
{
    [Fact]
    public async Task Health_is_503_while_loading_and_200_once_loaded()
    {
        using var gate = new ManualResetEventSlim(false);
        var runner = new FakeRunner();
        var spec = FakeBackend.Spec(runner);
        var slow = spec with { CreateBackend = () => { gate.Wait(TimeSpan.FromSeconds(30)); return spec.CreateBackend(); } };
        var app = SmoaServer.Build([new("Serilog:MinimumLevel:Default", "Warning"), new("Smoa:Urls", "http://127.0.0.1:0")],
            o => { o.AdminKey = TestHost.Key; o.ServedModelName = "m"; o.AdaptersDir = "/nonexistent-smoa"; }, slow);
        await app.StartAsync();
        using var http = new HttpClient { BaseAddress = SmoaServer.BoundAddress(app) };
        http.DefaultRequestHeaders.Authorization = new("Bearer", TestHost.Key);
        Assert.Equal(HttpStatusCode.ServiceUnavailable, (await http.GetAsync("/health")).StatusCode);
        var early = await http.PostAsync("/v1/completions", new StringContent("""{"model":"m","prompt":"x"}""", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.ServiceUnavailable, early.StatusCode);
        gate.Set();
        await app.Services.GetRequiredService<ServerStatus>().Loaded.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/health")).StatusCode);
        await app.StopAsync();
        await app.DisposeAsync();
    }

    [Fact]
    public async Task A_model_that_fails_to_load_stops_the_server_without_crashing()
    {
        var spec = FakeBackend.Spec(new FakeRunner());
        var broken = spec with { ChatTemplate = null, CreateBackend = () => throw new InvalidDataException("model.safetensors: tensor 'x' is truncated") };
        var app = SmoaServer.Build([new("Serilog:MinimumLevel:Default", "Fatal"), new("Smoa:Urls", "http://127.0.0.1:0")],
            o => { o.AdminKey = TestHost.Key; o.ServedModelName = "m"; o.AdaptersDir = "/nonexistent-smoa"; }, broken);
        await app.StartAsync();
        var model = app.Services.GetRequiredService<ServerStatus>();
        var e = await Assert.ThrowsAsync<InvalidDataException>(() => model.Loaded.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Contains("truncated", e.Message);
        var lifetime = app.Services.GetRequiredService<IHostApplicationLifetime>();
        Assert.True(lifetime.ApplicationStopping.WaitHandle.WaitOne(TimeSpan.FromSeconds(10)));
        Environment.ExitCode = 0; // set by the failed load for `smoa serve`; not this test process's business
        await app.StopAsync();
        await app.DisposeAsync();
    }

    [Fact]
    public async Task Options_bind_from_configuration_and_environment()
    {
        const string env = "SMOA__RETRYAFTERSECONDS"; // only this test reads it, and explicit settings override it elsewhere
        Environment.SetEnvironmentVariable(env, "9");
        try
        {
            var app = SmoaServer.Build(
                [new("Smoa:MaxQueued", "7"), new("Smoa:Adapters:tenant-a", "/data/a"), new("Smoa:ServedModelName", "from-config"),
                 new("Smoa:AdminKey", "k"), new("Smoa:Urls", "http://127.0.0.1:0")],
                engine: FakeBackend.Spec(new FakeRunner()));
            var o = app.Services.GetRequiredService<Microsoft.Extensions.Options.IOptions<ServerOptions>>().Value;
            Assert.Equal(7, app.Services.GetRequiredService<Microsoft.Extensions.Options.IOptions<EngineOptions>>().Value.MaxQueued);
            Assert.Equal("/data/a", o.Adapters["tenant-a"]);
            Assert.Equal(9, o.RetryAfterSeconds);
            Assert.Equal("from-config", app.Services.GetRequiredService<ServerStatus>().BaseModelId);
            await app.DisposeAsync();
        }
        finally { Environment.SetEnvironmentVariable(env, null); }
    }

    [Fact]
    public async Task Garbage_bodies_never_produce_a_server_error()
    {
        await using var host = await TestHost.StartAsync(FakeBackend.Spec(new FakeRunner()));
        var rng = new Random(1234);
        string[] seeds =
        [
            """{"model":"fake-base","messages":[{"role":"user","content":"hi"}],"max_tokens":3}""",
            """{"model":"fake-base","prompt":[1,2,3],"max_tokens":3,"stop":["a"],"stream":true}""",
            """{"model":"fake-base","messages":[{"role":"user","content":"x"}],"add_generation_prompt":false}""",
            """{"tokens":[104,105]}""",
        ];
        string[] paths = ["/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"];
        const string alphabet = "{}[]\":,0123456789-.eE truefalsnul\\u\u00e9\ud83e\udd16abc";
        for (int i = 0; i < 160; i++)
        {
            var text = new StringBuilder(seeds[i % seeds.Length]);
            for (int m = rng.Next(1, 6); m > 0; m--)
            {
                int at = rng.Next(text.Length);
                if (rng.Next(2) == 0) text.Remove(at, 1);
                else text.Insert(at, alphabet[rng.Next(alphabet.Length)]);
            }
            foreach (var path in paths)
            {
                var resp = await host.Http.PostAsync(path, new StringContent(text.ToString(), Encoding.UTF8, "application/json"));
                Assert.True((int)resp.StatusCode < 500, $"{path} {text} -> {(int)resp.StatusCode} {await resp.Content.ReadAsStringAsync()}");
            }
        }
        Assert.Equal(HttpStatusCode.OK, (await host.Http.GetAsync("/health")).StatusCode);
    }
}
