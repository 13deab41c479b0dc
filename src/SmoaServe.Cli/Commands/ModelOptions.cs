using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Hosting;
using SmoaServe.Engine.Model;
using SmoaServe.Engine.Runtime;
using SmoaServe.Platform.Adapters;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Cli.Commands;

/// <summary>Options shared by the commands that load a model: --model, --device, --dtype, --threads, --adapter, --smoa-form.</summary>
public static class ModelOptions
{
    public static readonly string[] ValueOptions = ["model", "device", "dtype", "threads", "adapter", "smoa-form", "weights-dtype"];

    public const string Help =
        "  --device cpu|cuda          where the model runs (default cpu)\n" +
        "  --dtype float32|bfloat16   compute dtype (default float32 on cpu, bfloat16 on cuda)\n" +
        "  --threads N                libtorch intra-op threads (default: one per core)\n" +
        "  --weights-dtype float32|bf16|int8  CPU float32 models: storage of the weights decode streams (default float32;\n" +
        "                             bf16 / int8 per-channel replace the base by its rounded weights, see docs/cpu-performance.md)\n" +
        "  --smoa-form anchored|folded  how SMoA adapters are applied (default anchored on cpu, folded on cuda)";

    /// <summary>--smoa-form, or null for the device's default.</summary>
    public static SmoaForm? SmoaForm(CliArgs args)
    {
        try { return AdapterRegistryOptions.ParseForm(args.Get("smoa-form")); }
        catch (ArgumentException e) { throw new UsageException("--smoa-form: " + e.Message); }
    }

    public const int MaxThreads = 1024;

    public static ModelLoadOptions LoadOptions(CliArgs args)
    {
        int threads = args.GetInt("threads", 0);
        // libgomp aborts the process when it cannot create the threads it was told to use: bound the count first.
        if (threads < 0 || threads > MaxThreads) throw new UsageException($"--threads must be between 1 and {MaxThreads} (got {threads})");
        TorchRuntime.ConfigureThreads(threads);
        Device device;
        try { device = TorchRuntime.ResolveDevice(args.Get("device") ?? "cpu"); }
        catch (ArgumentException e) { throw new UsageException("--device: " + e.Message); }
        ScalarType? dtype = null;
        if (args.Get("dtype") is { } d)
        {
            try { dtype = TorchRuntime.ParseDtype(d); }
            catch (ArgumentException e) { throw new UsageException("--dtype: " + e.Message); }
        }
        var weights = ParseWeightStorage(args);
        return new ModelLoadOptions(device, dtype, weights);
    }

    private static WeightStorage ParseWeightStorage(CliArgs args)
    {
        try { return WeightStorages.Parse(args.Get("weights-dtype")); }
        catch (ArgumentException e) { throw new UsageException("--weights-dtype: " + e.Message); }
    }

    /// <summary>Where the command line caches SMoA layouts: $SMOA_DATA_DIR when set, else nowhere (in memory).</summary>
    public static string? DataDirectory => Environment.GetEnvironmentVariable("SMOA_DATA_DIR") is { Length: > 0 } d ? d : null;

    /// <summary>The --model checkpoint (or a built model) with its layout cache and adapter registry.</summary>
    public static EngineModel Engine(CliArgs args, LlamaModel? model = null, string? dataDirectory = null) =>
        model is null
            ? EngineModel.Load(args.Required("model"), LoadOptions(args), SmoaForm(args), dataDirectory ?? DataDirectory)
            : EngineModel.FromModel(model, SmoaForm(args), dataDirectory ?? DataDirectory);

    /// <summary>
    /// Makes the --adapter directory resident and returns the id to request it by (its directory name when that is a valid
    /// adapter name, else "adapter"); null when no --adapter was given.
    /// </summary>
    public static string? AddAdapter(CliArgs args, EngineModel engine)
    {
        if (args.Get("adapter") is not { } dir) return null;
        if (!Directory.Exists(dir)) throw new UsageException($"--adapter: directory not found: {dir}");
        string name = Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(dir)));
        string id = AdapterName.IsValid(name) ? name : "adapter";
        engine.AddAdapter(id, dir);
        return id;
    }
}
