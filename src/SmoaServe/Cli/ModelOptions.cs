using SmoaServe.Engine.Model;
using SmoaServe.Engine.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Cli;

/// <summary>Options shared by the commands that load a model: --model, --device, --dtype, --threads, --adapter.</summary>
public static class ModelOptions
{
    public static readonly string[] ValueOptions = ["model", "device", "dtype", "threads", "adapter", "smoa-form"];

    public const string Help =
        "  --device cpu|cuda          where the model runs (default cpu)\n" +
        "  --dtype float32|bfloat16   compute dtype (default float32 on cpu, bfloat16 on cuda)\n" +
        "  --threads N                libtorch intra-op threads (default: one per core)\n" +
        "  --smoa-form anchored|folded  how SMoA adapters are applied (default anchored on cpu, folded on cuda)";

    /// <summary>
    /// HOOK for the adapters code: turns (base model, --adapter DIR) into an adapter source holding that adapter and the
    /// id to request it by. Set it once at start-up (e.g. from a module initializer in the adapters' CLI file).
    /// While it is null, --adapter is an error "adapters not available yet".
    /// </summary>
    public static Func<LlamaModel, string, Engine.Adapters.SmoaForm?, (IAdapterSource Source, string AdapterId)>? AdapterSourceFactory { get; set; }

    /// <summary>--smoa-form, or null for the device's default.</summary>
    public static Engine.Adapters.SmoaForm? SmoaForm(CliArgs args)
    {
        try { return Engine.Adapters.AdapterRegistryOptions.ParseForm(args.Get("smoa-form")); }
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
        return new ModelLoadOptions(device, dtype);
    }

    /// <summary>The adapter given with --adapter (null source when there is none).</summary>
    public static (IAdapterSource? Source, string? AdapterId) Adapter(CliArgs args, LlamaModel model)
    {
        if (args.Get("adapter") is not { } dir) return (null, null);
        if (AdapterSourceFactory is null) throw new UsageException("--adapter: adapters not available yet");
        if (!Directory.Exists(dir)) throw new UsageException($"--adapter: directory not found: {dir}");
        var (source, id) = AdapterSourceFactory(model, dir, SmoaForm(args));
        return (source, id);
    }
}
