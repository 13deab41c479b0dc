using System.Collections.Concurrent;
using SmoaServe.Engine.Scheduling;
using SmoaServe.Text;

namespace SmoaServe.Server;

public enum AdapterOrigin { Preloaded, Directory }

public sealed record AdapterEntry(string Name, string Directory, AdapterOrigin Origin, DateTimeOffset LoadedAt);

/// <summary>
/// The served model: the base checkpoint on its scheduler plus the adapters loaded on it, by API model id.
/// Adapter loads and removals run on the model thread between steps.
/// </summary>
public sealed class ServingModel : IDisposable
{
    private readonly ModelSpec _spec;
    private readonly ConcurrentDictionary<string, AdapterEntry> _adapters = new(StringComparer.Ordinal);
    private readonly TaskCompletionSource _loaded = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private IModelBackend? _backend;

    public ServingModel(string baseModelId, ModelSpec spec, SchedulerOptions schedulerOptions, ISchedulerMetrics? metrics)
    {
        BaseModelId = baseModelId;
        _spec = spec;
        CreatedAt = DateTimeOffset.UtcNow;
        Scheduler = new Scheduler(CreateRunner, schedulerOptions, metrics);
    }

    public string BaseModelId { get; }
    public DateTimeOffset CreatedAt { get; }
    public ITextTokenizer Tokenizer => _spec.Tokenizer;
    public IChatTemplate? ChatTemplate => _spec.ChatTemplate;
    public IReadOnlySet<int> EosTokenIds => _spec.EosTokenIds;
    public Scheduler Scheduler { get; }
    public int MaxModelLength => Scheduler.MaxSequenceLength;
    /// <summary>Retry-After seconds sent with 429 when the queue is full.</summary>
    public int RetryAfterSeconds { get; init; } = 1;

    /// <summary>Completes when the base model and the preloaded adapters are ready (/health turns 200).</summary>
    public Task Loaded => _loaded.Task;
    public bool IsLoaded => _loaded.Task.IsCompletedSuccessfully;
    /// <summary>Set at shutdown: new generation requests get 503 while in-flight ones finish.</summary>
    public volatile bool Draining;

    public void MarkLoaded() => _loaded.TrySetResult();
    public void MarkFailed(Exception e) => _loaded.TrySetException(e);

    public IReadOnlyList<AdapterEntry> Adapters => _adapters.Values.OrderBy(a => a.Name, StringComparer.Ordinal).ToList();
    public bool TryGetAdapter(string name, out AdapterEntry entry) => _adapters.TryGetValue(name, out entry!);

    /// <summary>The adapter id for an API model id: null for the base model; 404 for an unknown id.</summary>
    public string? ResolveAdapter(string? model)
    {
        if (model is null || model == BaseModelId) return null;
        return _adapters.ContainsKey(model) ? model : throw ApiException.ModelNotFound(model);
    }

    public async Task LoadAdapterAsync(string name, string directory, AdapterOrigin origin)
    {
        ValidateAdapterName(name);
        string dir = Path.GetFullPath(directory);
        if (!System.IO.Directory.Exists(dir)) throw new DirectoryNotFoundException($"adapter '{name}': directory {dir} does not exist");
        await Scheduler.RunOnModelThread(_ => _backend!.LoadAdapter(name, dir));
        _adapters[name] = new AdapterEntry(name, dir, origin, DateTimeOffset.UtcNow);
    }

    /// <summary>Serves the adapters the backend created itself (see <see cref="ModelSpec.BuiltInAdapters"/>).</summary>
    public async Task RegisterBuiltInAdaptersAsync()
    {
        foreach (var name in _spec.BuiltInAdapters)
        {
            ValidateAdapterName(name);
            if (!await Scheduler.RunOnModelThread(r => r.HasAdapter(name))) throw new InvalidOperationException($"built-in adapter '{name}' is missing");
            _adapters[name] = new AdapterEntry(name, "(built-in)", AdapterOrigin.Preloaded, DateTimeOffset.UtcNow);
        }
    }

    public async Task<bool> RemoveAdapterAsync(string name)
    {
        if (!_adapters.TryRemove(name, out _)) return false;
        return await Scheduler.RunOnModelThread(_ => _backend!.RemoveAdapter(name));
    }

    private void ValidateAdapterName(string name)
    {
        if (string.IsNullOrWhiteSpace(name) || name.Length > 200 || name.Any(char.IsControl))
            throw new ArgumentException($"invalid adapter name '{name}'");
        if (name == BaseModelId) throw new ArgumentException($"adapter name '{name}' is the base model's id");
    }

    private Engine.Runner.IModelRunner CreateRunner()
    {
        _backend = _spec.CreateBackend();
        return new OwnedRunner(_backend);
    }

    public void Dispose() => Scheduler.Dispose();
}
