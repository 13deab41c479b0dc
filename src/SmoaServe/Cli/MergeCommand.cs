using System.Runtime.CompilerServices;
using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Adapters.Smoa;

namespace SmoaServe.Cli;

/// <summary>`smoa merge`: writes base + adapter as one plain Hugging Face checkpoint (PEFT merge_and_unload).</summary>
public sealed class MergeCommand : ICommand
{
    public string Name => "merge";
    public string Summary => "merge an SMoA or LoRA adapter into the base weights, writing a new HF checkpoint";
    public string Usage => """
        usage: smoa merge --model DIR --adapter DIR --out DIR [--data DIR]

          --model DIR     base checkpoint (config.json + model.safetensors or shards)
          --adapter DIR   adapter_config.json + adapter_model.safetensors (SMoA or PEFT LoRA)
          --out DIR       where the merged checkpoint goes (created; config, tokenizer and other files are copied)
          --data DIR      data directory whose SMoA layout cache to use and fill (optional)

        The merged weights are W + ΔW in the base checkpoint's dtype; scoring the result without an adapter equals
        scoring the base with the adapter.
        """;

    public int Run(string[] args)
    {
        var a = CliArgs.Parse(args, ["model", "adapter", "out", "data"]);
        if (a.Positionals.Count > 0) throw new UsageException($"unexpected argument '{a.Positionals[0]}'");
        string model = a.Required("model"), adapter = a.Required("adapter"), outDir = a.Required("out");
        var watch = System.Diagnostics.Stopwatch.StartNew();
        int merged = AdapterMerge.MergeCheckpoint(model, adapter, outDir, a.Get("data"), Console.Error);
        Console.WriteLine($"merged {merged} weight matrices into {outDir} ({watch.Elapsed.TotalSeconds:F1} s)");
        return 0;
    }
}

/// <summary>
/// Plugs the adapter registry into the `--adapter DIR` option of `smoa score` / `smoa generate`
/// (<see cref="ModelOptions.AdapterSourceFactory"/>). The SMoA layout cache goes under $SMOA_DATA_DIR when it is set.
/// </summary>
internal static class AdapterCliHook
{
    [ModuleInitializer]
    internal static void Install() => ModelOptions.AdapterSourceFactory ??= LoadSingleAdapter;

    private static (Engine.Model.IAdapterSource, string) LoadSingleAdapter(Engine.Model.LlamaModel model, string directory, SmoaForm? form)
    {
        var view = BaseModelView.From(model);
        var registry = new AdapterRegistry(view, new LayoutStore(view, Environment.GetEnvironmentVariable("SMOA_DATA_DIR") is { Length: > 0 } d ? d : null),
            AdapterRegistryOptions.For(model.Device, form));
        string name = Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(directory)));
        string id = System.Text.RegularExpressions.Regex.IsMatch(name, "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$") ? name : "adapter";
        registry.Load(id, directory);
        return (registry, id);
    }
}
