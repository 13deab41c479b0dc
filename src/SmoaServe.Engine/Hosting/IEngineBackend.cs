using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Runner;

namespace SmoaServe.Engine.Hosting;

/// <summary>Where an adapter comes from: a directory (PEFT / cpeft files) or tensors already in memory (a trainer's output).</summary>
public abstract record AdapterSource
{
    private AdapterSource() { }

    public static AdapterSource FromDirectory(string path) => new Directory(path);
    /// <summary>An in-memory adapter; its tensors are copied when it is added, the caller keeps ownership.</summary>
    public static AdapterSource FromDefinition(AdapterDefinition definition) => new Definition(definition);

    public sealed record Directory(string Path) : AdapterSource;
    public sealed record Definition(AdapterDefinition Adapter) : AdapterSource;
}

/// <summary>
/// The device side that an <see cref="EngineHost"/> drives from its model thread: the runner and the resident adapters.
/// <see cref="ServingBackend"/> is the real one; tests substitute fakes.
/// </summary>
public interface IEngineBackend : IDisposable
{
    IModelRunner Runner { get; }

    /// <summary>
    /// Reads and validates an adapter directory against the base. Runs off the model thread (file I/O and checks only,
    /// no device work); the result is added with <see cref="AddAdapter"/> and disposed by the caller.
    /// </summary>
    AdapterDefinition ReadAdapter(string directory);

    /// <summary>Makes an adapter resident (device copies), replacing one of that id atomically. Model thread.</summary>
    AdapterInfo AddAdapter(string id, AdapterDefinition definition);

    /// <summary>
    /// Everything of <see cref="AddAdapter"/> that needs no device (layouts, folded factors), on the calling thread, off
    /// the model thread; the install's steps and commit then run on the model thread. The definition must outlive the
    /// install. Default: all the work at commit.
    /// </summary>
    IAdapterInstall PrepareAdapter(string id, AdapterDefinition definition) => new DeferredInstall(() => AddAdapter(id, definition));

    /// <summary>Drops a resident adapter; false when there was none. Any thread.</summary>
    bool RemoveAdapter(string id);

    /// <summary>Details of every resident adapter. Any thread.</summary>
    IReadOnlyList<AdapterInfo> ResidentAdapters { get; }

    /// <summary>The model itself, for work that needs it (training); null for backends without one (fakes).</summary>
    EngineModel? Model => null;
}

/// <summary>The real backend: an <see cref="EngineModel"/> and a runner with the server's KV slots.</summary>
public sealed class ServingBackend : IEngineBackend
{
    private readonly EngineModel _model;
    private readonly ModelRunner _runner;

    public ServingBackend(EngineModel model, int slots, int maxSequenceLength)
    {
        _model = model;
        try { _runner = model.CreateRunner(slots, maxSequenceLength); }
        catch { model.Dispose(); throw; }
    }

    public IModelRunner Runner => _runner;
    public EngineModel Model => _model;
    public AdapterDefinition ReadAdapter(string directory) => _model.ReadAdapter(directory);
    public AdapterInfo AddAdapter(string id, AdapterDefinition definition) => _model.AddAdapter(id, definition, replace: true);
    public IAdapterInstall PrepareAdapter(string id, AdapterDefinition definition) => _model.Adapters.Prepare(id, definition, replace: true);
    public bool RemoveAdapter(string id) => _model.Adapters.Remove(id);
    public IReadOnlyList<AdapterInfo> ResidentAdapters => _model.Adapters.List();

    public void Dispose()
    {
        _runner.Dispose();
        _model.Dispose();
    }
}
