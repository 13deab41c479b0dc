using SmoaServe.Engine.Adapters;

namespace SmoaServe.Cli.Commands;

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
