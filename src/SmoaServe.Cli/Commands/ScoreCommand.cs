using System.Text.RegularExpressions;
using SmoaServe.Engine.Checkpoints;
using SmoaServe.Engine.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Cli.Commands;

/// <summary>`smoa score`: one forward pass per ids_N sequence of a safetensors file, logits_N written to another.</summary>
public sealed partial class ScoreCommand : ICommand
{
    public string Name => "score";
    public string Summary => "logits of token sequences (safetensors in, safetensors out)";
    public string Usage =>
        "usage: smoa score --model DIR [--adapter DIR] --input IN.safetensors --output OUT.safetensors [--device cpu|cuda] [--dtype float32|bfloat16]\n" +
        "\n" +
        "For every 1-D int64 tensor ids_N in IN: one forward pass over that sequence (no BOS added), written to OUT as\n" +
        "float32 logits_N [T, vocab]. Other tensors in IN are ignored.\n" +
        "\n" +
        "  --model DIR                Hugging Face Llama checkpoint directory\n" +
        "  --adapter DIR              adapter applied to every sequence (SMoA or PEFT LoRA)\n" +
        "  --input FILE               safetensors file with ids_0, ids_1, ...\n" +
        "  --output FILE              safetensors file to write (replaced atomically)\n" +
        ModelOptions.Help;

    [GeneratedRegex("^ids_([0-9]+)$")]
    private static partial Regex IdsName();

    public int Run(string[] args)
    {
        var a = CliArgs.Parse(args, [.. ModelOptions.ValueOptions, "input", "output"]);
        if (a.Positionals.Count > 0) throw new UsageException($"unexpected argument '{a.Positionals[0]}'");
        string modelDir = a.Required("model"), input = a.Required("input"), output = a.Required("output");
        if (!File.Exists(input)) throw new UsageException($"--input: file not found: {input}");

        using var inputFile = SafeTensorsFile.Open(input);
        var sequences = inputFile.Names
            .Select(n => (Name: n, Match: IdsName().Match(n)))
            .Where(x => x.Match.Success)
            .Select(x => (x.Name, Index: x.Match.Groups[1].Value))
            .OrderBy(x => x.Index.TrimStart('0').Length).ThenBy(x => x.Index.TrimStart('0'), StringComparer.Ordinal) // numeric order, any length (long.Parse overflowed)
            .ThenBy(x => x.Index, StringComparer.Ordinal)
            .ToList();
        if (sequences.Count == 0) throw new InvalidDataException($"{input}: no ids_N tensors");

        using var engine = ModelOptions.Engine(a);
        var model = engine.Model;
        string? adapterId = ModelOptions.AddAdapter(a, engine);

        var clock = System.Diagnostics.Stopwatch.StartNew();
        var outputs = new List<(string, Tensor)>();
        try
        {
            foreach (var (name, index) in sequences)
            {
                using var ids = ReadIds(inputFile, name, model.Config.VocabSize);
                var batch = engine.Adapters.CreateBatch([adapterId]);
                using var scope = torch.NewDisposeScope();
                var logits = model.Forward(ids.view(1, -1).to(model.Device), batch)[0].to_type(ScalarType.Float32).cpu(); // [T, vocab]
                outputs.Add(($"logits_{index}", logits.DetachFromDisposeScope()));
            }
            SafeTensorsWriter.Write(output, outputs, new Dictionary<string, string> { ["format"] = "pt" });
        }
        finally
        {
            foreach (var (_, t) in outputs) t.Dispose();
        }
        Console.Error.WriteLine($"scored {sequences.Count} sequence(s) in {clock.Elapsed.TotalSeconds:F3} s with {modelDir}{(adapterId is null ? "" : $" + adapter {adapterId}")} -> {output}");
        return 0;
    }

    /// <summary>A 1-D int64 ids tensor with every id inside the vocabulary.</summary>
    private static Tensor ReadIds(SafeTensorsFile file, string name, int vocab)
    {
        var info = file.Info(name);
        if (info.DType != "I64" || info.Shape.Length != 1 || info.Shape[0] == 0)
            throw new InvalidDataException($"{file.Path}: '{name}' must be a non-empty 1-D int64 tensor (is {info.DType} [{string.Join(", ", info.Shape)}])");
        var ids = file.ReadTensor(name);
        long min, max;
        using (var lo = ids.min()) min = lo.item<long>();
        using (var hi = ids.max()) max = hi.item<long>();
        if (min < 0 || max >= vocab)
        {
            ids.Dispose();
            throw new InvalidDataException($"{file.Path}: '{name}' has token id {(min < 0 ? min : max)} outside the vocabulary (0..{vocab - 1})");
        }
        return ids;
    }
}
