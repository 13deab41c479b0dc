using SmoaServe.Engine.Scheduling;

namespace SmoaServe.Engine.Hosting;

/// <summary>
/// What the engine is told: the base checkpoint, where and how it runs, and the scheduler's limits. Bound from the
/// "Smoa" configuration section by the server (appsettings.json, SMOA__* variables, command line) and filled in by the
/// command line for the one-shot commands.
/// </summary>
public sealed class EngineOptions
{
    public const string Section = "Smoa";
    /// <summary>Default context per KV slot when <see cref="MaxModelLen"/> is unset (the checkpoint's own limit if smaller).</summary>
    public const int DefaultMaxModelLen = 4096;

    /// <summary>Checkpoint directory (config.json, *.safetensors, tokenizer.json).</summary>
    public string? Model { get; set; }
    public string Device { get; set; } = "cpu";
    /// <summary>float32 / bfloat16 / float16; null = the device's default.</summary>
    public string? Dtype { get; set; }
    /// <summary>"anchored" / "folded" (see <see cref="Adapters.SmoaForm"/>); null = the device's default.</summary>
    public string? SmoaForm { get; set; }
    /// <summary>float32 CPU models: "float32" (null) / "bf16" / "int8" storage of the weights decode streams (docs/cpu-performance.md).</summary>
    public string? WeightsDtype { get; set; }
    /// <summary>Data directory: the SMoA layout cache (layouts/&lt;base fingerprint&gt;/); null = ./data.</summary>
    public string? Data { get; set; }

    /// <summary>KV slots = most sequences in the running batch.</summary>
    public int MaxRunning { get; set; } = 16;
    /// <summary>Token budget per step: one per decoding row plus the prefill chunks.</summary>
    public int MaxBatchedTokens { get; set; } = 256;
    /// <summary>Longest prefill chunk of one prompt per step.</summary>
    public int MaxPrefillChunk { get; set; } = 128;
    /// <summary>Requests waiting for a slot before the next one is refused.</summary>
    public int MaxQueued { get; set; } = 256;
    /// <summary>Context length per slot; null = min(max_position_embeddings, <see cref="DefaultMaxModelLen"/>).</summary>
    public int? MaxModelLen { get; set; }
    /// <summary>Requests one tenant may have waiting; null = only <see cref="MaxQueued"/>.</summary>
    public int? MaxQueuedPerTenant { get; set; }
    /// <summary>Equal shares of the running batch per tenant, with preemption of the largest (default on).</summary>
    public bool FairShare { get; set; } = true;
    /// <summary>Most adapters on the device at once (vLLM --max-loras); null = no limit.</summary>
    public int? MaxDeviceAdapters { get; set; }
    /// <summary>Most device bytes of adapter factors; null = no limit.</summary>
    public long? MaxDeviceAdapterBytes { get; set; }
    /// <summary>Host memory for validated adapters kept in front of the disk (vLLM --max-cpu-loras, in bytes); default 2 GiB.</summary>
    public long? MaxHostAdapterBytes { get; set; } = 2L << 30;

    public ResidencyOptions Residency => new()
    {
        MaxDeviceAdapters = MaxDeviceAdapters, MaxDeviceBytes = MaxDeviceAdapterBytes, MaxHostBytes = MaxHostAdapterBytes,
    };

    /// <summary>The data directory as an absolute path (./data when unset).</summary>
    public string DataDirectory => Path.GetFullPath(Data ?? "data");

    public SchedulerOptions Scheduler => new()
    {
        MaxRunning = MaxRunning, MaxBatchedTokens = MaxBatchedTokens, MaxPrefillChunk = MaxPrefillChunk, MaxQueued = MaxQueued,
        MaxQueuedPerOwner = MaxQueuedPerTenant, FairShare = FairShare,
    };

    /// <summary>Every problem with these options (empty when they are usable); checked at start-up.</summary>
    public IReadOnlyList<string> Problems()
    {
        var problems = new List<string>();
        if (MaxRunning < 1) problems.Add($"MaxRunning must be >= 1 (got {MaxRunning})");
        if (MaxBatchedTokens < 1) problems.Add($"MaxBatchedTokens must be >= 1 (got {MaxBatchedTokens})");
        if (MaxPrefillChunk < 1) problems.Add($"MaxPrefillChunk must be >= 1 (got {MaxPrefillChunk})");
        if (MaxQueued < 0) problems.Add($"MaxQueued must be >= 0 (got {MaxQueued})");
        if (MaxModelLen is < 2) problems.Add($"MaxModelLen must be >= 2 (got {MaxModelLen})");
        if (MaxQueuedPerTenant is < 0) problems.Add($"MaxQueuedPerTenant must be >= 0 (got {MaxQueuedPerTenant})");
        problems.AddRange(Residency.Problems());
        string device = Device.Trim().ToLowerInvariant();
        if (device is not ("cpu" or "cuda") && !(device.StartsWith("cuda:", StringComparison.Ordinal) && int.TryParse(device.AsSpan(5), out _)))
            problems.Add($"Device '{Device}' is not cpu, cuda or cuda:N");
        try { Adapters.AdapterRegistryOptions.ParseForm(SmoaForm); }
        catch (ArgumentException e) { problems.Add(e.Message); }
        if (Dtype is not null)
        {
            try { Runtime.TorchRuntime.ParseDtype(Dtype); }
            catch (ArgumentException e) { problems.Add(e.Message); }
        }
        try { global::SmoaServe.Engine.Model.WeightStorages.Parse(WeightsDtype); }
        catch (ArgumentException e) { problems.Add(e.Message); }
        return problems;
    }
}
