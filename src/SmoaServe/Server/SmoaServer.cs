using Microsoft.Extensions.Options;
using Prometheus;
using Serilog;
using Serilog.Events;
using SmoaServe.Engine.Scheduling;

namespace SmoaServe.Server;

/// <summary>Builds the `smoa serve` web host; constructible in-process (tests start it on http://127.0.0.1:0).</summary>
public static class SmoaServer
{
    /// <param name="config">configuration entries applied last (e.g. from the command line), "Smoa:Model" etc.</param>
    /// <param name="configure">edits the bound options (tests; --adapter pairs)</param>
    /// <param name="model">the model to serve; null = load <see cref="SmoaOptions.Model"/> with the engine</param>
    public static WebApplication Build(IEnumerable<KeyValuePair<string, string?>>? config = null, Action<SmoaOptions>? configure = null,
        ModelSpec? model = null)
    {
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { ContentRootPath = AppContext.BaseDirectory, Args = [] });
        if (config is not null) builder.Configuration.AddInMemoryCollection(config);
        var options = builder.Configuration.GetSection(SmoaOptions.Section).Get<SmoaOptions>() ?? new SmoaOptions();
        configure?.Invoke(options);
        var keys = CreateKeyValidator(options);
        var spec = model ?? EngineModel.Load(options);
        string baseId = options.ResolveBaseModelId();

        builder.WebHost.UseUrls(options.Urls ?? builder.Configuration["urls"] ?? "http://127.0.0.1:8000");
        builder.WebHost.ConfigureKestrel(k => k.Limits.MaxRequestBodySize = options.MaxRequestBodyBytes);
        builder.Services.Configure<HostOptions>(h => h.ShutdownTimeout = TimeSpan.FromSeconds(options.ShutdownTimeoutSeconds));
        bool jsonLogs = options.LogFormat.Equals("json", StringComparison.OrdinalIgnoreCase);
        if (!jsonLogs && !options.LogFormat.Equals("text", StringComparison.OrdinalIgnoreCase))
            throw new ArgumentException($"log format '{options.LogFormat}': expected text or json");
        builder.Services.AddSerilog((services, log) =>
        {
            log.MinimumLevel.Information()
                .MinimumLevel.Override("Microsoft.AspNetCore", LogEventLevel.Warning)
                .ReadFrom.Configuration(builder.Configuration)
                .Enrich.FromLogContext();
            if (jsonLogs) log.WriteTo.Console(new Serilog.Formatting.Compact.CompactJsonFormatter());
            else log.WriteTo.Console(outputTemplate: "[{Timestamp:HH:mm:ss} {Level:u3}] {Message:lj} {Properties:j}{NewLine}{Exception}");
        });

        var metrics = new ServerMetrics();
        builder.Services.AddSingleton(Options.Create(options));
        builder.Services.AddSingleton(metrics);
        builder.Services.AddSingleton(keys);
        builder.Services.AddSingleton(_ => new ServingModel(baseId, spec, SchedulerOptionsOf(options), metrics)
        {
            RetryAfterSeconds = options.RetryAfterSeconds,
        });
        builder.Services.AddHostedService<ModelService>();
        builder.Services.AddSingleton<AdapterDirectoryWatcher>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<AdapterDirectoryWatcher>());
        builder.Services.AddOpenApi();

        var app = builder.Build();
        app.UseSerilogRequestLogging(o => o.EnrichDiagnosticContext = (diag, http) => diag.Set("RequestId", http.TraceIdentifier));
        // outside the error middleware, so that errors are counted with the status they were answered with
        app.Use(async (http, next) =>
        {
            try { await next(http); }
            finally { metrics.OnRequest((http.GetEndpoint() as RouteEndpoint)?.RoutePattern.RawText ?? "unmatched", http.Response.StatusCode); }
        });
        app.UseMiddleware<ApiErrorMiddleware>();
        app.UseStatusCodePages(context => ApiErrorWriter.WriteAsync(context.HttpContext, new ApiException(context.HttpContext.Response.StatusCode,
            $"No route {context.HttpContext.Request.Method} {context.HttpContext.Request.Path} ({context.HttpContext.Response.StatusCode}).",
            "invalid_request_error", null, "not_found")));
        app.MapOpenApi();
        app.MapMetrics("/metrics", metrics.Registry);
        Endpoints.Map(app, keys);
        return app;
    }

    public static SchedulerOptions SchedulerOptionsOf(SmoaOptions o) => new()
    {
        MaxRunning = o.MaxRunning, MaxBatchedTokens = o.MaxBatchedTokens, MaxPrefillChunk = o.MaxPrefillChunk, MaxQueued = o.MaxQueued,
    };

    private static IApiKeyValidator CreateKeyValidator(SmoaOptions o)
    {
        if (o.AllowAnonymous) return new AnonymousValidator();
        string key = o.ResolveAdminKey();
        if (string.IsNullOrEmpty(key))
            throw new ArgumentException("no admin API key: set SMOA_ADMIN_KEY (or Smoa:AdminKey), or pass --allow-anonymous for local use");
        return new AdminKeyValidator(key);
    }

    /// <summary>The address Kestrel bound (the real port when the URL asked for port 0); valid after StartAsync.</summary>
    public static Uri BoundAddress(WebApplication app) =>
        new(app.Urls.FirstOrDefault() ?? throw new InvalidOperationException("the server is not listening"));
}
