using Prometheus;
using SmoaServe.Engine.Scheduling;

namespace SmoaServe.Server;

/// <summary>Prometheus metrics of one server (own registry, so in-process test hosts do not share counters).</summary>
public sealed class ServerMetrics : ISchedulerMetrics
{
    private static readonly double[] LatencyBuckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

    public CollectorRegistry Registry { get; } = Metrics.NewCustomRegistry();
    private readonly Counter _requests;
    private readonly Counter _promptTokens;
    private readonly Counter _generationTokens;
    private readonly Gauge _running;
    private readonly Gauge _queued;
    private readonly Histogram _ttft;
    private readonly Histogram _itl;
    private readonly Histogram _latency;
    private readonly Counter _finished;

    /// <summary>vLLM-named routing gauges, residency and per-tenant counters in the same registry.</summary>
    public RoutingMetrics Routing { get; }

    public ServerMetrics()
    {
        var f = Metrics.WithCustomRegistry(Registry);
        _requests = f.CreateCounter("smoa_requests_total", "API requests by endpoint and status code.", "endpoint", "status");
        _promptTokens = f.CreateCounter("smoa_prompt_tokens_total", "Prompt tokens processed, by model id.", "model");
        _generationTokens = f.CreateCounter("smoa_generation_tokens_total", "Tokens generated, by model id.", "model");
        _running = f.CreateGauge("smoa_running_requests", "Sequences in the running batch.");
        _queued = f.CreateGauge("smoa_queued_requests", "Requests waiting for a KV slot.");
        _ttft = f.CreateHistogram("smoa_time_to_first_token_seconds", "Time from submission to the first generated token.",
            new HistogramConfiguration { Buckets = LatencyBuckets });
        _itl = f.CreateHistogram("smoa_inter_token_latency_seconds", "Time between consecutive generated tokens of a sequence.",
            new HistogramConfiguration { Buckets = LatencyBuckets });
        _latency = f.CreateHistogram("smoa_request_duration_seconds", "End-to-end generation request latency.",
            new HistogramConfiguration { Buckets = LatencyBuckets, LabelNames = ["endpoint"] });
        _finished = f.CreateCounter("smoa_sequences_finished_total", "Finished sequences by reason.", "reason");
        Routing = new RoutingMetrics(Registry);
    }

    public void OnRequest(string endpoint, int status) => _requests.WithLabels(endpoint, status.ToString()).Inc();

    public void OnGeneration(string endpoint, string model, int promptTokens, int completionTokens, TimeSpan latency)
    {
        _promptTokens.WithLabels(model).Inc(promptTokens);
        _generationTokens.WithLabels(model).Inc(completionTokens);
        _latency.WithLabels(endpoint).Observe(latency.TotalSeconds);
    }

    public void OnAdapterUploaded(string tenant) => Routing.OnUpload(tenant);

    public void OnStep(int running, int queued, int decodeRows, int prefillTokens)
    {
        _running.Set(running);
        _queued.Set(queued);
    }

    public void OnFirstToken(TimeSpan timeToFirstToken) => _ttft.Observe(timeToFirstToken.TotalSeconds);
    public void OnInterToken(TimeSpan interTokenLatency) => _itl.Observe(interTokenLatency.TotalSeconds);
    public void OnFinished(FinishReason reason, int promptTokens, int completionTokens) =>
        _finished.WithLabels(reason.ToString().ToLowerInvariant()).Inc();
}
