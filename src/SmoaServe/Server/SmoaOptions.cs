namespace SmoaServe.Server;

/// <summary>
/// Everything `smoa serve` can be told, bound from the "Smoa" configuration section: appsettings.json, then
/// environment variables (SMOA__MODEL, SMOA__ADAPTERS__name=dir, ...), then the command line (highest).
/// </summary>
public sealed class SmoaOptions
{
    public const string Section = "Smoa";

    /// <summary>Checkpoint directory (config.json, *.safetensors, tokenizer.json).</summary>
    public string? Model { get; set; }
    /// <summary>Id of the base model in the API; default: the model directory's name.</summary>
    public string? ServedModelName { get; set; }
    /// <summary>Listen address(es), ';'-separated; unset = ASPNETCORE_URLS / URLS, else http://127.0.0.1:8000.</summary>
    public string? Urls { get; set; }
    /// <summary>Data directory: the SMoA layout cache (layouts/&lt;base fingerprint&gt;/); default ./data.</summary>
    public string? Data { get; set; }
    public string Device { get; set; } = "cpu";
    /// <summary>float32 / bfloat16 / float16; null = the runner's default.</summary>
    public string? Dtype { get; set; }
    /// <summary>"anchored" / "folded" (see Engine.Adapters.SmoaForm); null = the device's default.</summary>
    public string? SmoaForm { get; set; }
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

    /// <summary>KV slots = most sequences in the running batch.</summary>
    public int MaxRunning { get; set; } = 16;
    public int MaxBatchedTokens { get; set; } = 256;
    public int MaxPrefillChunk { get; set; } = 128;
    public int MaxQueued { get; set; } = 256;
    /// <summary>Context length per slot; null = the model's max_position_embeddings.</summary>
    public int? MaxModelLen { get; set; }
    public long MaxRequestBodyBytes { get; set; } = 4 << 20;
    /// <summary>Graceful shutdown: in-flight streams get this long to finish, then are cancelled.</summary>
    public double ShutdownTimeoutSeconds { get; set; } = 30;
    /// <summary>Retry-After seconds sent with 429.</summary>
    public int RetryAfterSeconds { get; set; } = 1;

    public string ResolveAdminKey() => string.IsNullOrEmpty(AdminKey) ? Environment.GetEnvironmentVariable("SMOA_ADMIN_KEY") ?? "" : AdminKey;

    public string ResolveBaseModelId() =>
        !string.IsNullOrWhiteSpace(ServedModelName) ? ServedModelName
        : Model is not null ? new DirectoryInfo(Path.TrimEndingDirectorySeparator(Path.GetFullPath(Model))).Name
        : throw new ArgumentException("no model: set --model (Smoa:Model)");
}
