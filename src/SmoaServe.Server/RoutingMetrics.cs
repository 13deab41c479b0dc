using Prometheus;
using SmoaServe.Engine.Hosting;
using SmoaServe.Platform.Adapters;

namespace SmoaServe.Server;

/// <summary>
/// The gauges the Gateway API Inference Extension's model-server protocol reads (vLLM names): queue, running batch, KV
/// usage and the LoRA adapters running / waiting; plus adapter residency and per-tenant counters. Gauges are filled from
/// the scheduler's last snapshot when /metrics is scraped. The vllm:* names hold a colon, which prometheus-net does not
/// allow in its collectors, so they are written as exposition text after the registry's own output.
/// </summary>
public sealed class RoutingMetrics
{
    private readonly Gauge _adapters;
    private readonly Counter _loads, _deviceEvictions, _hostEvictions, _preemptions;
    private readonly Counter _tenantRequests, _tenantPromptTokens, _tenantGenerationTokens, _tenantRejected, _tenantUploads;
    private EngineHost? _engine;
    private AdapterService? _adapterService;

    public RoutingMetrics(CollectorRegistry registry)
    {
        var f = Metrics.WithCustomRegistry(registry);
        _adapters = f.CreateGauge("smoa_adapters", "Registered adapters by residency tier (device, host, disk).", "tier");
        _loads = f.CreateCounter("smoa_adapter_loads_total", "Adapters copied to the device on first use (or after an eviction).");
        _deviceEvictions = f.CreateCounter("smoa_adapter_device_evictions_total", "Adapters moved off the device to make room.");
        _hostEvictions = f.CreateCounter("smoa_adapter_host_evictions_total", "Adapter host copies dropped to stay within the host budget.");
        _preemptions = f.CreateCounter("smoa_preemptions_total", "Running rows preempted to give another tenant its share of the batch.");
        _tenantRequests = f.CreateCounter("smoa_tenant_requests_total", "Generation requests by tenant and endpoint.", "tenant", "endpoint");
        _tenantPromptTokens = f.CreateCounter("smoa_tenant_prompt_tokens_total", "Prompt tokens by tenant.", "tenant");
        _tenantGenerationTokens = f.CreateCounter("smoa_tenant_generation_tokens_total", "Generated tokens by tenant.", "tenant");
        _tenantRejected = f.CreateCounter("smoa_tenant_rejected_total", "Requests refused with 429 by tenant and the limit that was hit.", "tenant", "limit");
        _tenantUploads = f.CreateCounter("smoa_tenant_adapter_uploads_total", "Adapters uploaded by tenant.", "tenant");
    }

    /// <summary>Fills the gauges from the engine at every scrape.</summary>
    public void Attach(CollectorRegistry registry, EngineHost engine, AdapterService adapters)
    {
        _engine = engine;
        _adapterService = adapters;
        registry.AddBeforeCollectCallback(() => Update(engine));
    }

    /// <summary>/metrics: the registry's exposition, then the vllm:* gauges.</summary>
    public async Task WriteAsync(HttpContext http, CollectorRegistry registry)
    {
        http.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
        using var buffer = new MemoryStream();
        await registry.CollectAndExportAsTextAsync(buffer, http.RequestAborted);
        buffer.Position = 0;
        await buffer.CopyToAsync(http.Response.Body, http.RequestAborted);
        await http.Response.WriteAsync(VllmText(), http.RequestAborted);
    }

    /// <summary>The vLLM-named gauges in the Prometheus text format.</summary>
    public string VllmText()
    {
        if (_engine is not { } engine || _adapterService is not { } adapters) return "";
        var s = engine.Scheduler.Snapshot;
        // adapters under the names requests use for them (the admin's view: "tenant/name" for tenants' adapters)
        var names = adapters.Visible(AdapterScope.Admin).ToDictionary(v => v.Record.EngineId, v => v.Id);
        string Names(IEnumerable<string> ids) => string.Join(",", ids.Select(id => names.GetValueOrDefault(id, id)).Order(StringComparer.Ordinal));
        int maxLora = engine.Residency.Options.MaxDeviceAdapters ?? Math.Max(engine.Scheduler.MaxRunning, 1);
        var inv = System.Globalization.CultureInfo.InvariantCulture;
        var text = new System.Text.StringBuilder();
        void Gauge(string name, string help, string labels, double value) =>
            text.Append("# HELP ").Append(name).Append(' ').Append(help).Append('\n')
                .Append("# TYPE ").Append(name).Append(" gauge\n")
                .Append(name).Append(labels).Append(' ').Append(value.ToString("R", inv)).Append('\n');
        Gauge("vllm:num_requests_waiting", "Requests waiting to be admitted to the running batch.", "", s.Waiting);
        Gauge("vllm:num_requests_running", "Requests in the running batch.", "", s.Running);
        Gauge("vllm:kv_cache_usage_perc", "Share of the KV cache in use (KV slots held by running requests), 0..1.", "", s.KvSlotUsage);
        Gauge("vllm:lora_requests_info", "LoRA adapters of running and waiting requests (comma-separated); the value is the time of the update.",
            $"{{running_lora_adapters=\"{Escape(Names(s.RunningAdapters))}\",waiting_lora_adapters=\"{Escape(Names(s.WaitingAdapters))}\",max_lora=\"{maxLora}\"}}",
            DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0);
        return text.ToString();
    }

    private static string Escape(string v) => v.Replace("\\", "\\\\").Replace("\"", "\\\"").Replace("\n", "\\n");

    public void OnGeneration(string tenant, string endpoint, int promptTokens, int completionTokens)
    {
        _tenantRequests.WithLabels(tenant, endpoint).Inc();
        _tenantPromptTokens.WithLabels(tenant).Inc(promptTokens);
        _tenantGenerationTokens.WithLabels(tenant).Inc(completionTokens);
    }

    public void OnRejected(string tenant, string limit) => _tenantRejected.WithLabels(tenant, limit).Inc();
    public void OnUpload(string tenant) => _tenantUploads.WithLabels(tenant).Inc();

    private void Update(EngineHost engine)
    {
        var s = engine.Scheduler.Snapshot;
        _preemptions.IncTo(s.Preemptions);
        var residency = engine.Residency.List();
        foreach (var tier in Enum.GetValues<AdapterTier>())
            _adapters.WithLabels(tier.ToString().ToLowerInvariant()).Set(residency.Count(r => r.Tier == tier));
        var stats = engine.Residency.Stats;
        _loads.IncTo(stats.Loads);
        _deviceEvictions.IncTo(stats.DeviceEvictions);
        _hostEvictions.IncTo(stats.HostEvictions);
    }
}
