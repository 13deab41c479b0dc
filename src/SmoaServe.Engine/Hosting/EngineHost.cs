using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Checkpoints;
using SmoaServe.Engine.Model;
using SmoaServe.Engine.Runner;
using SmoaServe.Engine.Runtime;
using SmoaServe.Engine.Scheduling;
using SmoaServe.Text;

namespace SmoaServe.Engine.Hosting;

/// <summary>What an <see cref="EngineHost"/> serves: the text side of the base model (read at once) and a factory for its
/// device side (run on the model thread).</summary>
public sealed record EngineSetup(ITextTokenizer Tokenizer, IChatTemplate? ChatTemplate, IReadOnlySet<int> EosTokenIds, Func<IEngineBackend> CreateBackend);

/// <summary>
/// The engine's composition root for serving: the base model's text side, and on one dedicated model thread the device
/// side (model, layout cache, resident adapters, runner) driven by the continuous-batching <see cref="Scheduler"/>.
/// Adapters are added from directories or from memory; directories are read and validated off the model thread, and
/// only the device copy runs between two steps. Work that needs the model itself (training) runs there too.
/// </summary>
public sealed class EngineHost : IDisposable
{
    private readonly EngineSetup _setup;
    private IEngineBackend? _backend;

    public EngineHost(EngineSetup setup, SchedulerOptions schedulerOptions, ISchedulerMetrics? metrics = null, ResidencyOptions? residency = null)
    {
        _setup = setup;
        Residency = new AdapterResidency(residency);
        Scheduler = new Scheduler(CreateRunner, schedulerOptions, metrics, Residency);
    }

    /// <summary>
    /// Reads the checkpoint's text side now (tokenizer, chat template, EOS ids; errors surface at once) and loads the
    /// weights on the model thread (<see cref="Ready"/> completes when done).
    /// </summary>
    public static EngineHost Load(EngineOptions options, ISchedulerMetrics? metrics = null)
    {
        if (options.Problems() is { Count: > 0 } problems) throw new ArgumentException(string.Join("; ", problems));
        string dir = Path.GetFullPath(options.Model ?? throw new ArgumentException("no model: set --model (Smoa:Model)"));
        if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"model directory not found: {dir}");
        var tokenizer = TokenizerLoader.Load(dir);
        var config = ModelConfig.Load(dir);
        var eos = new HashSet<int>(GenerationConfig.Load(dir, config).EosTokenIds);
        if (eos.Count == 0 && tokenizer.EosTokenId is { } e) eos.Add(e);
        int maxLen = options.MaxModelLen ?? Math.Min(config.MaxPositionEmbeddings, EngineOptions.DefaultMaxModelLen);
        var load = new ModelLoadOptions(TorchRuntime.ResolveDevice(options.Device), options.Dtype is { } dt ? TorchRuntime.ParseDtype(dt) : null,
            WeightStorages.Parse(options.WeightsDtype));
        var form = AdapterRegistryOptions.ParseForm(options.SmoaForm);
        string data = options.DataDirectory;
        int slots = options.MaxRunning;
        return new EngineHost(
            new EngineSetup(tokenizer, ChatTemplateLoader.Load(dir), eos,
                () => new ServingBackend(EngineModel.Load(dir, load, form, data), slots, maxLen)),
            options.Scheduler, metrics, options.Residency);
    }

    public ITextTokenizer Tokenizer => _setup.Tokenizer;
    /// <summary>The checkpoint's chat template; null when it has none.</summary>
    public IChatTemplate? ChatTemplate => _setup.ChatTemplate;
    /// <summary>Ids that end generation (generation_config.json eos_token_id, else the tokenizer's EOS).</summary>
    public IReadOnlySet<int> EosTokenIds => _setup.EosTokenIds;
    public Scheduler Scheduler { get; }
    /// <summary>Completes when the device side is up (faults with the load error).</summary>
    public Task Ready => Scheduler.Ready;
    public int MaxSequenceLength => Scheduler.MaxSequenceLength;
    public int VocabSize => Scheduler.VocabSize;

    /// <summary>Which adapters are on the device, in host memory or on disk; loads on first use and evicts within its budgets.</summary>
    public AdapterResidency Residency { get; }

    /// <summary>Details of the adapters resident on the device (empty before <see cref="Ready"/>).</summary>
    public IReadOnlyList<AdapterInfo> ResidentAdapters => _backend?.ResidentAdapters ?? [];

    /// <summary>
    /// Makes an adapter resident under <paramref name="id"/>, replacing one of that id (atomically: a bad new version leaves
    /// the old one serving). Reading and validating a directory, the update bound, the SMoA layouts and the folded factors
    /// run on a thread-pool task; the model thread only copies to the device, one module or projection group per work
    /// item between decode steps, then commits.
    /// </summary>
    public async Task<AdapterInfo> AddAdapterAsync(string id, AdapterSource source)
    {
        if (string.IsNullOrEmpty(id)) throw new ArgumentException("adapter id is empty");
        await Ready;
        var backend = _backend!;
        switch (source)
        {
            case AdapterSource.Definition d:
                if (backend.Model is { } model) await Task.Run(() => AdapterBounds.Check(d.Adapter, model.View, $"adapter '{id}'"));
                // no files to come back from: it stays on the device (pinned)
                return await InstallAsync(backend, id, d.Adapter, info => Residency.MarkResident(id, null, null, info.Bytes));
            case AdapterSource.Directory dir:
                var definition = await Task.Run(() => backend.ReadAdapter(dir.Path));
                try
                {
                    // the validated factors stay in host memory (the host tier), so an eviction does not re-read the files
                    return await InstallAsync(backend, id, definition, info => Residency.MarkResident(id, dir.Path, definition, info.Bytes));
                }
                catch
                {
                    definition.Dispose();
                    throw;
                }
            default:
                throw new ArgumentException($"unknown adapter source {source}");
        }
    }

    /// <summary>
    /// Prepares off the model thread, copies in slices between decode steps, then commits and records the residency in
    /// the same model-thread work item (so no step sees one without the other).
    /// </summary>
    private async Task<AdapterInfo> InstallAsync(IEngineBackend backend, string id, AdapterDefinition definition, Action<AdapterInfo> committed)
    {
        using var install = await Task.Run(() => backend.PrepareAdapter(id, definition));
        while (await Scheduler.RunOnModelThread(_ => StepFor(install, InstallSliceTime))) { }
        return await Scheduler.RunOnModelThread(_ =>
        {
            var info = install.Commit();
            committed(info);
            return info;
        });
    }

    /// <summary>Model-thread time one work item of an adapter install may take (plus at most one more piece).</summary>
    public static readonly TimeSpan InstallSliceTime = TimeSpan.FromMilliseconds(10);

    private static bool StepFor(IAdapterInstall install, TimeSpan budget)
    {
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        bool more;
        do more = install.Step();
        while (more && System.Diagnostics.Stopwatch.GetElapsedTime(start) < budget);
        return more;
    }

    /// <summary>Reads and validates an adapter directory against the base, off the model thread (no device work).</summary>
    public async Task<AdapterDefinition> ReadAdapterAsync(string directory)
    {
        await Ready;
        var backend = _backend!;
        return await Task.Run(() => backend.ReadAdapter(directory));
    }

    /// <summary>
    /// Registers an adapter that is loaded on first use (see <see cref="AdapterResidency"/>): from its directory, or from
    /// <paramref name="hostCopy"/> already validated (ownership passes to the engine).
    /// </summary>
    public async Task RegisterAdapterAsync(string id, string directory, AdapterDefinition? hostCopy = null, bool pinned = false)
    {
        if (string.IsNullOrEmpty(id)) throw new ArgumentException("adapter id is empty");
        await Ready;
        Residency.Register(id, directory, hostCopy, pinned);
    }

    /// <summary>
    /// Forgets an adapter: queued requests on it end, rows already running on it finish, then it leaves the device.
    /// False when it was not registered.
    /// </summary>
    public async Task<bool> RemoveAdapterAsync(string id)
    {
        await Ready;
        return await Scheduler.RunOnModelThread(_ => Residency.Unregister(id) || _backend!.RemoveAdapter(id));
    }

    /// <summary>Runs <paramref name="work"/> on the model thread between two scheduler steps, with the device side.</summary>
    public async Task<T> RunOnDeviceAsync<T>(Func<IEngineBackend, T> work)
    {
        await Ready;
        return await Scheduler.RunOnModelThread(_ => work(_backend!));
    }

    private IModelRunner CreateRunner()
    {
        _backend = _setup.CreateBackend();
        Residency.Attach(_backend, () => Scheduler);
        return new OwnedRunner(_backend);
    }

    public void Dispose()
    {
        Scheduler.Dispose();
        Residency.Dispose();
    }

    /// <summary>Hands the scheduler the backend's runner; disposing it disposes the whole backend.</summary>
    private sealed class OwnedRunner(IEngineBackend backend) : IModelRunner
    {
        private readonly IModelRunner _inner = backend.Runner;
        public int VocabSize => _inner.VocabSize;
        public int MaxSequenceLength => _inner.MaxSequenceLength;
        public int SlotCount => _inner.SlotCount;
        public bool HasAdapter(string? adapterId) => _inner.HasAdapter(adapterId);
        public float[] Prefill(int slot, ReadOnlySpan<int> tokens, int startPosition, string? adapterId) => _inner.Prefill(slot, tokens, startPosition, adapterId);
        public float[][] PrefillBatch(IReadOnlyList<PrefillRow> rows) => _inner.PrefillBatch(rows);
        public float[][] Decode(IReadOnlyList<DecodeRow> rows) => _inner.Decode(rows);
        public void FreeSlot(int slot) => _inner.FreeSlot(slot);
        public bool CopySlotPrefix(int source, int target, int length) => _inner.CopySlotPrefix(source, target, length);
        public void Dispose() => backend.Dispose();
    }
}
