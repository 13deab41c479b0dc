using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Checkpoints;
using SmoaServe.Engine.Model;
using SmoaServe.Engine.Runner;
using SmoaServe.Engine.Runtime;
using SmoaServe.Text;

namespace SmoaServe.Server;

/// <summary>The real model: a Llama checkpoint on TorchSharp with the adapter registry, behind <see cref="ModelSpec"/>.</summary>
public static class EngineModel
{
    /// <summary>Default context per KV slot when --max-model-len is not given (the checkpoint's own limit if smaller).</summary>
    public const int DefaultMaxModelLen = 4096;

    /// <summary>Reads the text side (tokenizer, chat template, config) now; the weights load later on the model thread.</summary>
    public static ModelSpec Load(SmoaOptions options)
    {
        string dir = Path.GetFullPath(options.Model ?? throw new ArgumentException("no model: set --model (Smoa:Model)"));
        if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"model directory not found: {dir}");
        var tokenizer = TokenizerLoader.Load(dir);
        var config = ModelConfig.Load(dir);
        var eos = new HashSet<int>(GenerationConfig.Load(dir, config).EosTokenIds);
        if (eos.Count == 0 && tokenizer.EosTokenId is { } e) eos.Add(e);
        int maxLen = options.MaxModelLen ?? Math.Min(config.MaxPositionEmbeddings, DefaultMaxModelLen);
        if (maxLen < 2) throw new ArgumentException($"max model length must be >= 2 (got {maxLen})");
        if (options.MaxRunning < 1) throw new ArgumentException($"max running sequences must be >= 1 (got {options.MaxRunning})");
        var loadOptions = new ModelLoadOptions(TorchRuntime.ResolveDevice(options.Device),
            options.Dtype is { } dt ? TorchRuntime.ParseDtype(dt) : null);
        var registryOptions = AdapterRegistryOptions.For(loadOptions.ResolvedDevice, AdapterRegistryOptions.ParseForm(options.SmoaForm));
        return new ModelSpec
        {
            Tokenizer = tokenizer,
            ChatTemplate = ChatTemplates.Load(dir),
            EosTokenIds = eos,
            CreateBackend = () => new EngineBackend(dir, loadOptions, registryOptions, options.MaxRunning, maxLen, DataDirectory(options)),
        };
    }


    /// <summary>Where SMoA layouts are cached (one SVD per layer × module × K, reused across restarts): --data, else ./data.</summary>
    public static string DataDirectory(SmoaOptions options) => Path.GetFullPath(options.Data ?? "data");
}

/// <summary>LlamaModel + AdapterRegistry + ModelRunner; created, used and disposed on the model thread.</summary>
internal sealed class EngineBackend : IModelBackend
{
    private readonly LlamaModel _model;
    private readonly AdapterRegistry _registry;
    private readonly ModelRunner _runner;

    public EngineBackend(string dir, ModelLoadOptions loadOptions, AdapterRegistryOptions registryOptions, int slots, int maxLen, string dataDirectory)
    {
        _model = LlamaModel.Load(dir, loadOptions);
        try
        {
            var view = BaseModelView.From(_model);
            _registry = new AdapterRegistry(view, new Engine.Adapters.Smoa.LayoutStore(view, dataDirectory), registryOptions);
            _runner = new ModelRunner(_model, slots, maxLen, _registry);
        }
        catch
        {
            _registry?.Dispose();
            _model.Dispose();
            throw;
        }
    }

    public IModelRunner Runner => _runner;

    public void LoadAdapter(string name, string directory)
    {
        _registry.Load(name, directory, replace: true);   // atomic: a bad new version leaves the old one serving
    }

    public bool RemoveAdapter(string name) => _registry.Remove(name);

    public void Dispose()
    {
        _runner.Dispose();
        _registry.Dispose();
        _model.Dispose();
    }
}
