using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Options;
using Serilog;
using Serilog.Events;
using SmoaServe.Engine.Hosting;
using SmoaServe.Platform.Adapters;
using SmoaServe.Platform.FineTuning;
using SmoaServe.Platform.Storage;
using SmoaServe.Platform.Tenants;

namespace SmoaServe.Server;

/// <summary>Builds the `smoa serve` web host; constructible in-process (tests start it on http://127.0.0.1:0).</summary>
public static class SmoaServer
{
    /// <param name="config">configuration entries applied last (e.g. from the command line), "Smoa:Model" etc.</param>
    /// <param name="configure">edits the bound server options (tests; --adapter pairs)</param>
    /// <param name="engine">what to serve instead of loading <see cref="EngineOptions.Model"/> (fakes, synthetic models)</param>
    /// <param name="configureEngine">edits the bound engine options</param>
    public static WebApplication Build(IEnumerable<KeyValuePair<string, string?>>? config = null, Action<ServerOptions>? configure = null,
        EngineSetup? engine = null, Action<EngineOptions>? configureEngine = null)
    {
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { ContentRootPath = AppContext.BaseDirectory, Args = [] });
        if (config is not null) builder.Configuration.AddInMemoryCollection(config);
        var section = builder.Configuration.GetSection(ServerOptions.Section);
        var services = builder.Services;

        services.AddOptions<ServerOptions>().Bind(section).Configure(o => configure?.Invoke(o)).ValidateOnStart();
        services.AddOptions<EngineOptions>().Bind(section).Configure(o => configureEngine?.Invoke(o)).ValidateOnStart();
        services.AddSingleton<IValidateOptions<ServerOptions>>(new ProblemsValidator<ServerOptions>(o => o.Problems()));
        services.AddSingleton<IValidateOptions<EngineOptions>>(new ProblemsValidator<EngineOptions>(o => o.Problems()));
        services.AddOptions<KestrelServerOptions>().Configure<IOptions<ServerOptions>>((k, o) =>
        {
            k.Limits.MaxRequestBodySize = o.Value.MaxRequestBodyBytes;
            // Kestrel's own refusals (malformed HTTP) get the API's JSON error body too
            k.ConfigureEndpointDefaults(listen => listen.Use(KestrelErrorShaping.Middleware));
        });
        // the host reads these while it is built: engine options are validated first (what to serve), then the server's
        services.AddOptions<HostOptions>().Configure<IOptions<EngineOptions>, IOptions<ServerOptions>>((h, e, o) =>
        {
            _ = e.Value;
            h.ShutdownTimeout = TimeSpan.FromSeconds(o.Value.ShutdownTimeoutSeconds);
        });
        if (engine is null)
            services.AddSingleton<IValidateOptions<EngineOptions>>(new ProblemsValidator<EngineOptions>(o =>
                o.Model is null ? ["no model: set --model (or Smoa:Model / SMOA__MODEL)"] : []));
        // listen addresses are host configuration, read before the host is built
        builder.WebHost.UseUrls(section[nameof(ServerOptions.Urls)] ?? builder.Configuration["urls"] ?? "http://127.0.0.1:8000");
        services.AddSerilog((sp, log) =>
        {
            log.MinimumLevel.Information()
                .MinimumLevel.Override("Microsoft.AspNetCore", LogEventLevel.Warning)
                .ReadFrom.Configuration(builder.Configuration)
                .Enrich.FromLogContext();
            // read from configuration: the logger exists before the options are validated (ServerOptions.Problems checks it)
            if (string.Equals(section[nameof(ServerOptions.LogFormat)], "json", StringComparison.OrdinalIgnoreCase))
                log.WriteTo.Console(new Serilog.Formatting.Compact.CompactJsonFormatter());
            else log.WriteTo.Console(outputTemplate: "[{Timestamp:HH:mm:ss} {Level:u3}] {Message:lj} {Properties:j}{NewLine}{Exception}");
        });

        services.AddSingleton<ServerMetrics>();
        services.AddSingleton(sp => new ServerStatus(sp.GetRequiredService<IOptions<ServerOptions>>().Value
            .ResolveBaseModelId(sp.GetRequiredService<IOptions<EngineOptions>>().Value)));
        services.AddSingleton(sp =>
        {
            var options = sp.GetRequiredService<IOptions<EngineOptions>>().Value;
            var metrics = sp.GetRequiredService<ServerMetrics>();
            return engine is null ? EngineHost.Load(options, metrics) : new EngineHost(engine, options.Scheduler, metrics);
        });
        // the platform store (tenants, keys, stored adapters) and adapter files live in the data directory
        services.AddSingleton<IPlatformStore>(sp => SqlitePlatformStore.OpenIn(sp.GetRequiredService<IOptions<EngineOptions>>().Value.DataDirectory));
        services.AddSingleton(sp => new AdapterFileStore(sp.GetRequiredService<IOptions<EngineOptions>>().Value.DataDirectory));
        services.AddSingleton<IAdapterCatalog>(sp => new StoredAdapterCatalog(sp.GetRequiredService<IPlatformStore>()));
        services.AddSingleton(sp => new AdapterService(sp.GetRequiredService<IAdapterCatalog>(), sp.GetRequiredService<EngineHost>(),
            sp.GetRequiredService<ServerStatus>().BaseModelId, sp.GetRequiredService<AdapterFileStore>(), sp.GetRequiredService<IPlatformStore>()));
        services.AddSingleton(sp => new TenantService(sp.GetRequiredService<IPlatformStore>(), sp.GetRequiredService<AdapterService>()));
        services.AddSingleton<TenantLimiter>();
        services.AddSingleton(sp => new TrainingFileStore(sp.GetRequiredService<IOptions<EngineOptions>>().Value.DataDirectory));
        services.AddSingleton(sp => new FineTuningService((IFineTuningStore)sp.GetRequiredService<IPlatformStore>(),
            sp.GetRequiredService<TrainingFileStore>(), sp.GetRequiredService<IPlatformStore>()));
        services.AddSingleton<IApiKeyValidator>(sp => sp.GetRequiredService<IOptions<ServerOptions>>().Value is var o && o.AllowAnonymous
            ? new AnonymousValidator() : new TenantKeyValidator(new AdminKeyValidator(o.ResolveAdminKey()), sp.GetRequiredService<TenantService>()));
        services.AddSingleton<OutputVocabulary>();
        services.AddSingleton<CompletionRunner>();
        services.AddHostedService<EngineService>();
        services.AddSingleton<AdapterDirectoryWatcher>();
        services.AddHostedService(sp => sp.GetRequiredService<AdapterDirectoryWatcher>());
        services.AddHostedService<MemoryReclaimer>();
        services.AddHostedService<FineTuningWorker>();
        services.AddOpenApi();

        var app = builder.Build();
        var metrics = app.Services.GetRequiredService<ServerMetrics>();
        app.UseSerilogRequestLogging(o => o.EnrichDiagnosticContext = (diag, http) =>
        {
            diag.Set("RequestId", http.TraceIdentifier);
            if (http.Items.ContainsKey(ApiErrorMiddleware.ClientClosedItem)) diag.Set("Outcome", "client closed the request");
        });
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
        // one document ("v1"): any other name is a 404 in the API's error shape, not the OpenAPI package's plain text
        app.MapOpenApi().AddEndpointFilter((context, next) =>
            context.HttpContext.GetRouteValue("documentName") as string == "v1" ? next(context)
                : throw new ApiException(404, "No such OpenAPI document; the API is described at /openapi/v1.json.", "invalid_request_error", null, "not_found"));
        // resolve the engine first: a missing or bad model directory fails here, not at the first request
        app.Services.GetRequiredService<EngineHost>();
        metrics.Routing.Attach(metrics.Registry, app.Services.GetRequiredService<EngineHost>(), app.Services.GetRequiredService<AdapterService>());
        Endpoints.Map(app);
        TenantEndpoints.Map(app, app.Services.GetRequiredService<IApiKeyValidator>());
        FineTuningEndpoints.Map(app, app.Services.GetRequiredService<IApiKeyValidator>());
        return app;
    }

    /// <summary>The address Kestrel bound (the real port when the URL asked for port 0); valid after StartAsync.</summary>
    public static Uri BoundAddress(WebApplication app) =>
        new(app.Urls.FirstOrDefault() ?? throw new InvalidOperationException("the server is not listening"));

    /// <summary>Options validation that reports each problem the options list themselves.</summary>
    private sealed class ProblemsValidator<T>(Func<T, IReadOnlyList<string>> problems) : IValidateOptions<T> where T : class
    {
        public ValidateOptionsResult Validate(string? name, T options) =>
            problems(options) is { Count: > 0 } p ? ValidateOptionsResult.Fail(p) : ValidateOptionsResult.Success;
    }
}
