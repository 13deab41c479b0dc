using Microsoft.Extensions.Options;
using SmoaServe.Engine.Hosting;
using SmoaServe.Platform.Adapters;

namespace SmoaServe.Server;

/// <summary>
/// Starts the engine with the host (the weights load on the model thread in the background: /health answers 503 until
/// done), registers the --adapter adapters, and at shutdown stops new work, lets in-flight streams finish, then cancels
/// the rest and releases the model.
/// </summary>
public sealed class EngineService(EngineHost engine, AdapterService adapters, ServerStatus status, IOptions<ServerOptions> options,
    IHostApplicationLifetime lifetime, ILogger<EngineService> logger) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        lifetime.ApplicationStopping.Register(() => status.Draining = true);
        _ = Task.Run(LoadAsync, CancellationToken.None);
        return Task.CompletedTask;
    }

    private async Task LoadAsync()
    {
        var started = System.Diagnostics.Stopwatch.StartNew();
        try
        {
            await engine.Ready;
            logger.LogInformation("Model {Model} loaded in {Seconds:F1}s: context {MaxModelLen}, {Slots} KV slots",
                status.BaseModelId, started.Elapsed.TotalSeconds, engine.MaxSequenceLength, engine.Scheduler.MaxRunning);
            foreach (var (name, dir) in options.Value.Adapters)
            {
                await adapters.RegisterAsync(name, AdapterSource.FromDirectory(dir), AdapterOrigin.Preloaded);
                logger.LogInformation("Adapter {Adapter} loaded from {Directory}", name, dir);
            }
            var restored = await adapters.RestoreAsync();
            if (restored.Count > 0) logger.LogInformation("{Count} stored adapters registered (loaded on first use)", restored.Count);
            status.MarkLoaded();
        }
        catch (Exception e)
        {
            logger.LogCritical(e, "Loading failed: {Message}", e.Message);
            status.MarkFailed(e);
            Environment.ExitCode = 1;
            lifetime.ApplicationStarted.Register(lifetime.StopApplication); // after start completes (at once if it has)
        }
    }

    /// <summary>Runs after the web server has stopped (it waits up to the shutdown timeout for in-flight requests).</summary>
    public async Task StopAsync(CancellationToken cancellationToken)
    {
        status.Draining = true;
        try
        {
            while (engine.Scheduler.InFlight > 0 && !cancellationToken.IsCancellationRequested)
                await Task.Delay(50, cancellationToken);
        }
        catch (OperationCanceledException) { }
        if (engine.Scheduler.InFlight > 0) logger.LogWarning("Cancelling {Count} in-flight requests at shutdown", engine.Scheduler.InFlight);
        engine.Dispose();
    }
}
