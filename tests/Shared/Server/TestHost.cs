using System.ClientModel;
using System.Net.Http.Headers;
using OpenAI;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using SmoaServe.Engine.Hosting;
using SmoaServe.Platform.Adapters;
using SmoaServe.Server;

namespace SmoaServe.Tests;

/// <summary>An in-process `smoa serve` on 127.0.0.1 with a random port.</summary>
public sealed class TestHost : IAsyncDisposable
{
    public const string Key = "test-admin-key";
    public WebApplication App { get; }
    public Uri BaseAddress { get; }
    public HttpClient Http { get; }
    public ServerStatus Status => App.Services.GetRequiredService<ServerStatus>();
    public EngineHost Engine => App.Services.GetRequiredService<EngineHost>();
    public AdapterService Adapters => App.Services.GetRequiredService<AdapterService>();

    /// <summary>The server's data directory (a fresh temporary one unless the test chose another); deleted with the host.</summary>
    public string DataDir => App.Services.GetRequiredService<Microsoft.Extensions.Options.IOptions<EngineOptions>>().Value.DataDirectory;
    private string? _ownedData;

    private TestHost(WebApplication app)
    {
        App = app;
        BaseAddress = SmoaServer.BoundAddress(app);
        Http = new HttpClient { BaseAddress = BaseAddress, Timeout = TimeSpan.FromSeconds(60) };
        Http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", Key);
    }

    public static async Task<TestHost> StartAsync(EngineSetup? model, Action<ServerOptions>? configure = null, string? baseName = "fake-base",
        Action<EngineOptions>? configureEngine = null)
    {
        string data = Path.Combine(Path.GetTempPath(), "smoa-data-" + Guid.NewGuid().ToString("N"));
        var app = SmoaServer.Build(
            [new("Serilog:MinimumLevel:Default", "Warning"), new("Smoa:Urls", "http://127.0.0.1:0")],
            o =>
            {
                o.AdminKey = Key;
                o.ServedModelName = baseName;
                o.AdaptersDir = Path.Combine(Path.GetTempPath(), "smoa-none-" + Guid.NewGuid().ToString("N"));
                o.ShutdownTimeoutSeconds = 5;
                configure?.Invoke(o);
            },
            model, o =>
            {
                o.Data = data;
                configureEngine?.Invoke(o);
            });
        await app.StartAsync();
        var host = new TestHost(app) { _ownedData = data };
        await host.Status.Loaded.WaitAsync(TimeSpan.FromSeconds(120));
        return host;
    }

    public OpenAIClient OpenAI(string key = Key) =>
        new(new ApiKeyCredential(key), new OpenAIClientOptions { Endpoint = new Uri(BaseAddress, "/v1") });

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        await App.StopAsync();
        await App.DisposeAsync();
        if (_ownedData is not null && Directory.Exists(_ownedData))
        {
            try { Directory.Delete(_ownedData, recursive: true); } catch (IOException) { }
        }
    }
}
