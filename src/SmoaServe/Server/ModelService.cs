using Microsoft.Extensions.Options;

namespace SmoaServe.Server;

/// <summary>
/// Loads the model on the model thread (in the background: /health answers 503 until done), preloads the
/// --adapter adapters, and at shutdown stops new work, lets in-flight streams finish, then cancels the rest.
/// </summary>
public sealed class ModelService(ServingModel model, IOptions<SmoaOptions> options, IHostApplicationLifetime lifetime,
    ILogger<ModelService> logger) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        lifetime.ApplicationStopping.Register(() => model.Draining = true);
        _ = Task.Run(LoadAsync, CancellationToken.None);
        return Task.CompletedTask;
    }

    private async Task LoadAsync()
    {
        var started = System.Diagnostics.Stopwatch.StartNew();
        try
        {
            await model.Scheduler.Ready;
            logger.LogInformation("Model {Model} loaded in {Seconds:F1}s: context {MaxModelLen}, {Slots} KV slots",
                model.BaseModelId, started.Elapsed.TotalSeconds, model.MaxModelLength, model.Scheduler.MaxRunning);
            await model.RegisterBuiltInAdaptersAsync();
            foreach (var (name, dir) in options.Value.Adapters)
            {
                await model.LoadAdapterAsync(name, dir, AdapterOrigin.Preloaded);
                logger.LogInformation("Adapter {Adapter} loaded from {Directory}", name, dir);
            }
            model.MarkLoaded();
        }
        catch (Exception e)
        {
            logger.LogCritical(e, "Loading failed: {Message}", e.Message);
            model.MarkFailed(e);
            Environment.ExitCode = 1;
            lifetime.ApplicationStarted.Register(lifetime.StopApplication); // after start completes (at once if it has)
        }
    }

    /// <summary>Runs after the web server has stopped (it waits up to the shutdown timeout for in-flight requests).</summary>
    public async Task StopAsync(CancellationToken cancellationToken)
    {
        model.Draining = true;
        try
        {
            while (model.Scheduler.InFlight > 0 && !cancellationToken.IsCancellationRequested)
                await Task.Delay(50, cancellationToken);
        }
        catch (OperationCanceledException) { }
        if (model.Scheduler.InFlight > 0) logger.LogWarning("Cancelling {Count} in-flight requests at shutdown", model.Scheduler.InFlight);
        model.Dispose();
    }
}
