using SmoaServe.Engine.Hosting;

namespace SmoaServe.Server;

/// <summary>
/// The server's own settings, bound from the "Smoa" configuration section like <see cref="EngineOptions"/>:
/// appsettings.json, then environment variables (SMOA__URLS, SMOA__ADAPTERS__name=dir, ...), then the command line.
/// </summary>
public sealed class ServerOptions
{
    public const string Section = EngineOptions.Section;

    /// <summary>Id of the base model in the API; default: the model directory's name.</summary>
    public string? ServedModelName { get; set; }
    /// <summary>Listen address(es), ';'-separated; unset = ASPNETCORE_URLS / URLS, else http://127.0.0.1:8000.</summary>
    public string? Urls { get; set; }
    /// <summary>Adapters preloaded by name → directory (--adapter NAME=DIR).</summary>
    public Dictionary<string, string> Adapters { get; set; } = new();
    /// <summary>Every sub-directory is served under its name and watched; default ./adapters.</summary>
    public string AdaptersDir { get; set; } = "adapters";
    /// <summary>How often the adapters directory is scanned; a change is applied once it is stable over one interval.</summary>
    public double AdaptersPollSeconds { get; set; } = 2;

    /// <summary>Console log format: "text" (default) or "json" (compact JSON, one event per line, for log shippers).</summary>
    public string LogFormat { get; set; } = "text";

    /// <summary>Admin API key; SMOA_ADMIN_KEY when unset.</summary>
    public string? AdminKey { get; set; }
    /// <summary>Serve without any key (local development only).</summary>
    public bool AllowAnonymous { get; set; }

    /// <summary>
    /// Serve GET /metrics without a key. By default it needs the admin key like the API (its labels carry adapter names,
    /// i.e. tenants); Prometheus sends it with <c>authorization: {credentials: KEY}</c> in the scrape config. Set this only
    /// when the listen address is private to the scraper.
    /// </summary>
    public bool MetricsAllowAnonymous { get; set; }

    public long MaxRequestBodyBytes { get; set; } = 4 << 20;
    /// <summary>Largest adapter upload (the whole multipart body), POST /v1/adapters.</summary>
    public long MaxUploadBytes { get; set; } = 512L << 20;
    /// <summary>Graceful shutdown: in-flight streams get this long to finish, then are cancelled.</summary>
    public double ShutdownTimeoutSeconds { get; set; } = 30;
    /// <summary>Retry-After seconds sent with 429.</summary>
    public int RetryAfterSeconds { get; set; } = 1;

    /// <summary>Largest file accepted by POST /v1/files.</summary>
    public long MaxFileBytes { get; set; } = 256L << 20;
    /// <summary>Fine-tuning: a job's training state is checkpointed every this many optimizer steps.</summary>
    public int FineTuneCheckpointSteps { get; set; } = 50;
    /// <summary>Fine-tuning: rows per forward (gradients are accumulated up to the batch size); bounds a step's memory and model-thread time.</summary>
    public int FineTuneMicroBatchSize { get; set; } = 8;
    /// <summary>Fine-tuning: longest conversation in tokens (also bounded by the served context).</summary>
    public int FineTuneMaxSequenceLength { get; set; } = 2048;
    /// <summary>Fine-tuning: about this many metrics events per job (every step for shorter jobs).</summary>
    public int FineTuneMetricsEvents { get; set; } = 200;
    /// <summary>
    /// Fine-tuning: the share of the model thread a job takes while requests are being served. After a piece of training
    /// work (one micro-batch) of t seconds the job waits t·(1 − share)/share before its next one, so decode steps run in between; with no request
    /// in flight it does not wait. 1: no waiting (training steps back to back, between single decode steps).
    /// </summary>
    public double FineTuneServingShare { get; set; } = 0.5;
    public int FineTuneMaxLineChars { get; set; } = 1 << 20;
    public int FineTuneMaxLines { get; set; } = 1_000_000;

    public string ResolveAdminKey() => string.IsNullOrEmpty(AdminKey) ? Environment.GetEnvironmentVariable("SMOA_ADMIN_KEY") ?? "" : AdminKey;

    public string ResolveBaseModelId(EngineOptions engine) =>
        !string.IsNullOrWhiteSpace(ServedModelName) ? ServedModelName
        : engine.Model is not null ? new DirectoryInfo(Path.TrimEndingDirectorySeparator(Path.GetFullPath(engine.Model))).Name
        : throw new ArgumentException("no model: set --model (Smoa:Model)");

    /// <summary>Every problem with these options (empty when they are usable); checked at start-up.</summary>
    public IReadOnlyList<string> Problems()
    {
        var problems = new List<string>();
        if (!LogFormat.Equals("json", StringComparison.OrdinalIgnoreCase) && !LogFormat.Equals("text", StringComparison.OrdinalIgnoreCase))
            problems.Add($"log format '{LogFormat}': expected text or json");
        if (MaxRequestBodyBytes < 1) problems.Add($"MaxRequestBodyBytes must be >= 1 (got {MaxRequestBodyBytes})");
        if (MaxUploadBytes < 1 || MaxUploadBytes > Engine.Adapters.AdapterFiles.MaxWeightsBytes)
            problems.Add($"MaxUploadBytes must be between 1 and {Engine.Adapters.AdapterFiles.MaxWeightsBytes} (got {MaxUploadBytes})");
        if (ShutdownTimeoutSeconds < 0) problems.Add($"ShutdownTimeoutSeconds must be >= 0 (got {ShutdownTimeoutSeconds})");
        if (MaxFileBytes < 1) problems.Add($"MaxFileBytes must be >= 1 (got {MaxFileBytes})");
        if (FineTuneCheckpointSteps < 1) problems.Add($"FineTuneCheckpointSteps must be >= 1 (got {FineTuneCheckpointSteps})");
        if (FineTuneMicroBatchSize < 1) problems.Add($"FineTuneMicroBatchSize must be >= 1 (got {FineTuneMicroBatchSize})");
        if (FineTuneMaxSequenceLength < 2) problems.Add($"FineTuneMaxSequenceLength must be >= 2 (got {FineTuneMaxSequenceLength})");
        if (FineTuneMetricsEvents < 1) problems.Add($"FineTuneMetricsEvents must be >= 1 (got {FineTuneMetricsEvents})");
        if (!(FineTuneServingShare > 0 && FineTuneServingShare <= 1)) problems.Add($"FineTuneServingShare must be in (0, 1] (got {FineTuneServingShare})");
        if (FineTuneMaxLineChars < 1 || FineTuneMaxLines < 1) problems.Add("FineTuneMaxLineChars and FineTuneMaxLines must be >= 1");
        if (RetryAfterSeconds < 0) problems.Add($"RetryAfterSeconds must be >= 0 (got {RetryAfterSeconds})");
        if (!(AdaptersPollSeconds > 0)) problems.Add($"AdaptersPollSeconds must be > 0 (got {AdaptersPollSeconds})");
        if (!AllowAnonymous && string.IsNullOrEmpty(ResolveAdminKey()))
            problems.Add("no admin API key: set SMOA_ADMIN_KEY (or Smoa:AdminKey), or pass --allow-anonymous for local use");
        return problems;
    }
}
