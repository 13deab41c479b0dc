using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Adapters.Smoa;
using SmoaServe.Engine.Model;
using SmoaServe.Engine.Runner;

namespace SmoaServe.Engine.Hosting;

/// <summary>
/// The base model on its device and what lives beside it: the SMoA layout cache and the adapter registry (which
/// adapters are resident on the device). The one place that wires these together; the command line uses it directly,
/// the server through <see cref="EngineHost"/>. Created, used and disposed on one thread.
/// </summary>
public sealed class EngineModel : IDisposable
{
    private EngineModel(LlamaModel model, SmoaForm? smoaForm, string? dataDirectory)
    {
        Model = model;
        try
        {
            View = BaseModelView.From(model);
            Layouts = new LayoutStore(View, dataDirectory);
            Adapters = new AdapterRegistry(View, Layouts, AdapterRegistryOptions.For(model.Device, smoaForm));
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    public LlamaModel Model { get; }
    /// <summary>The base weights as the adapter code sees them (shapes, device, dtype, fingerprint).</summary>
    public BaseModelView View { get; }
    /// <summary>SMoA layouts (one SVD per layer × module × K), cached under the data directory when one is given.</summary>
    public LayoutStore Layouts { get; }
    /// <summary>The adapters resident on the device, by id.</summary>
    public AdapterRegistry Adapters { get; }

    /// <summary>Loads a Hugging Face checkpoint directory.</summary>
    /// <param name="dataDirectory">where SMoA layouts are cached across runs; null keeps them in memory only</param>
    public static EngineModel Load(string directory, ModelLoadOptions options, SmoaForm? smoaForm = null, string? dataDirectory = null) =>
        new(LlamaModel.Load(directory, options), smoaForm, dataDirectory);

    /// <summary>Wraps a model built in memory (e.g. a synthetic one); takes ownership of it.</summary>
    public static EngineModel FromModel(LlamaModel model, SmoaForm? smoaForm = null, string? dataDirectory = null) =>
        new(model, smoaForm, dataDirectory);

    /// <summary>Reads and validates an adapter directory against this base. Reads files only: no device work.</summary>
    public AdapterDefinition ReadAdapter(string directory) => AdapterFiles.Read(directory, View);

    /// <summary>Makes an adapter resident under <paramref name="id"/> (its tensors are copied; the caller keeps the definition).</summary>
    public AdapterInfo AddAdapter(string id, AdapterDefinition definition, bool replace = false) => Adapters.Add(id, definition, replace);

    /// <summary>Reads <paramref name="directory"/> and makes it resident under <paramref name="id"/>.</summary>
    public AdapterInfo AddAdapter(string id, string directory, bool replace = false)
    {
        using var definition = ReadAdapter(directory);
        return AddAdapter(id, definition, replace);
    }

    /// <summary>A runner over this model with <paramref name="slots"/> KV slots of <paramref name="maxSequenceLength"/> tokens.</summary>
    public ModelRunner CreateRunner(int slots, int maxSequenceLength) => new(Model, slots, maxSequenceLength, Adapters);

    public void Dispose()
    {
        Adapters.Dispose();
        Model.Dispose();
    }
}
