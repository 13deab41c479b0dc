using System.Globalization;
using System.Text.Encodings.Web;
using System.Text.Json;
using SmoaServe.Engine.Checkpoints;
using SmoaServe.Engine.Generation;
using SmoaServe.Engine.Model;
using SmoaServe.Engine.Runner;
using SmoaServe.Engine.Runtime;
using SmoaServe.Text;

namespace SmoaServe.Cli.Commands;

/// <summary>`smoa generate`: prefill + KV-cache decode of one prompt, printing the text (or JSON) and decode speed.</summary>
public sealed class GenerateCommand : ICommand
{
    public string Name => "generate";
    public string Summary => "generate a continuation of a prompt";
    public string Usage =>
        "usage: smoa generate --model DIR [--adapter DIR] (--prompt TEXT | --prompt-ids 1,2,3) --max-new-tokens N\n" +
        "                     [--temperature T] [--top-p P] [--top-k K] [--seed S] [--stop TEXT]... [--device cpu|cuda]\n" +
        "                     [--dtype float32|bfloat16] [--json]\n" +
        "       smoa generate --synthetic " + SyntheticLlama.SpecHelp + " --prompt-ids 1,2,3 --max-new-tokens N [...]\n" +
        "\n" +
        "Decodes with the KV cache (greedy unless --temperature > 0). Stops at max-new-tokens, at an EOS id of\n" +
        "config.json / generation_config.json, or at a --stop string. Prints the text as it is generated; with --json the\n" +
        "last line printed is {\"ids\": [generated ids], \"text\": \"...\"}. Prompt/decode timing and tokens/s go to stderr.\n" +
        "\n" +
        "  --model DIR                Hugging Face Llama checkpoint directory (weights, config, tokenizer)\n" +
        "  --synthetic SPEC           random-weight model built in memory instead of --model (needs --prompt-ids)\n" +
        "  --adapter DIR              adapter to generate with (SMoA or PEFT LoRA)\n" +
        "  --prompt TEXT              prompt text, tokenized with special tokens (BOS) as Hugging Face does\n" +
        "  --prompt-ids IDS           prompt token ids, comma separated, used as given\n" +
        "  --max-new-tokens N         tokens to generate at most\n" +
        "  --temperature T            0 = greedy (default); > 0 samples\n" +
        "  --top-p P                  nucleus sampling mass (default 1)\n" +
        "  --top-k K                  keep the K most likely tokens (default 0 = all)\n" +
        "  --seed S                   random seed for sampling (repeatable output)\n" +
        "  --stop TEXT                stop string (repeatable); the text ends before it\n" +
        "  --json                     print {\"ids\": [...], \"text\": \"...\"} as the last line\n" +
        ModelOptions.Help;

    public int Run(string[] args)
    {
        var a = CliArgs.Parse(args,
            [.. ModelOptions.ValueOptions, "synthetic", "prompt", "prompt-ids", "max-new-tokens", "temperature", "top-p", "top-k", "seed", "stop"],
            ["json"]);
        if (a.Positionals.Count > 0) throw new UsageException($"unexpected argument '{a.Positionals[0]}'");
        if (a.Has("model") == a.Has("synthetic")) throw new UsageException("give exactly one of --model DIR or --synthetic SPEC");
        if (a.Has("prompt") == a.Has("prompt-ids")) throw new UsageException("give exactly one of --prompt TEXT or --prompt-ids 1,2,3");
        if (a.Has("synthetic") && a.Has("prompt")) throw new UsageException("--synthetic has no tokenizer: use --prompt-ids");
        if (a.Has("synthetic") && a.Has("adapter")) throw new UsageException("--adapter needs --model");
        int maxNew = a.RequiredInt("max-new-tokens");
        if (maxNew <= 0) throw new UsageException("--max-new-tokens must be positive");
        var sampling = new SamplingParams
        {
            Temperature = a.GetDouble("temperature", 0), TopK = a.GetInt("top-k", 0), TopP = a.GetDouble("top-p", 1.0),
            Seed = a.Get("seed") is null ? null : a.GetInt("seed", 0), MaxTokens = maxNew,
        };
        try { sampling.Validate(); }
        catch (ArgumentException e) { throw new UsageException(e.Message); }
        bool json = a.Flag("json");
        var givenIds = a.Get("prompt-ids") is { } idList ? ParseIds(idList) : null;
        using var engine = ModelOptions.Engine(a, a.Has("synthetic") ? SyntheticModel(a) : null);
        var model = engine.Model;
        ITextTokenizer? tokenizer = LoadTokenizer(a);
        if (tokenizer is null && a.All("stop").Count > 0) throw new UsageException("--stop needs a tokenizer (--model)");
        var prompt = PromptIds(a.Get("prompt"), givenIds, tokenizer, model.Config.VocabSize);
        var eos = a.Get("model") is { } d2 ? GenerationConfig.Load(d2, model.Config).EosTokenIds : [];
        string? adapterId = ModelOptions.AddAdapter(a, engine);

        using var runner = engine.CreateRunner(slots: 1, maxSequenceLength: prompt.Count + maxNew);
        var generator = new SequenceGenerator(runner, tokenizer);
        var request = new SequenceRequest
        {
            PromptIds = prompt, Sampling = sampling with { StopTokenIds = eos.ToHashSet() }, StopStrings = a.All("stop"), AdapterId = adapterId,
        };
        var result = generator.Generate(request, json ? null : (_, piece) => { Console.Out.Write(piece); Console.Out.Flush(); });

        if (json)
            Console.Out.WriteLine(JsonSerializer.Serialize(new { ids = result.Ids, text = result.Text },
                new JsonSerializerOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }));
        else if (tokenizer is null) Console.Out.WriteLine(string.Join(",", result.Ids));
        else Console.Out.WriteLine();
        ReportSpeed(result, model);
        return 0;
    }

    /// <summary>The checkpoint's tokenizer; with --prompt-ids a checkpoint without one still generates (ids only, empty text).</summary>
    private static ITextTokenizer? LoadTokenizer(CliArgs a)
    {
        if (a.Get("model") is not { } dir) return null;
        bool hasTokenizer = File.Exists(Path.Combine(dir, "tokenizer.json")) || File.Exists(Path.Combine(dir, "tokenizer.model"));
        if (!hasTokenizer && !a.Has("prompt"))
        {
            Console.Error.WriteLine($"smoa generate: note: no tokenizer in {dir}; printing ids only");
            return null;
        }
        return TokenizerLoader.Load(dir);
    }

    private static LlamaModel SyntheticModel(CliArgs a)
    {
        ModelConfig config;
        try { config = SyntheticLlama.ParseSpec(a.Required("synthetic")); }
        catch (ArgumentException e) { throw new UsageException("--synthetic: " + e.Message); }
        return SyntheticLlama.Create(config, ModelOptions.LoadOptions(a));
    }

    private static List<int> ParseIds(string list)
    {
        var ids = new List<int>();
        foreach (var part in list.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
            ids.Add(int.TryParse(part, NumberStyles.Integer, CultureInfo.InvariantCulture, out int id)
                ? id : throw new UsageException($"--prompt-ids: '{part}' is not a token id"));
        return ids;
    }

    /// <summary>--prompt text is tokenized with special tokens (BOS), like Hugging Face's tokenizer(text).</summary>
    private static IReadOnlyList<int> PromptIds(string? text, List<int>? givenIds, ITextTokenizer? tokenizer, int vocab)
    {
        IReadOnlyList<int> ids = text is not null ? tokenizer!.Encode(text, addSpecialTokens: true) : givenIds!;
        if (ids.Count == 0) throw new UsageException("the prompt is empty");
        foreach (int id in ids)
            if (id < 0 || id >= vocab) throw new UsageException($"prompt token id {id} is outside the vocabulary (0..{vocab - 1})");
        return ids;
    }

    private static void ReportSpeed(SequenceResult r, LlamaModel model)
    {
        var c = model.Config;
        long bytesPerToken = model.StreamedWeightBytes > 0 ? model.StreamedWeightBytes : SyntheticLlama.WeightBytesReadPerToken(c, model.Dtype);
        Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"prompt {r.PromptTokens} tokens, prefill {r.PrefillSeconds * 1000:F1} ms; generated {r.Ids.Count} tokens ({r.FinishReason}); " +
            $"decode {r.Ids.Count - 1} steps in {r.DecodeSeconds:F3} s = {r.DecodeTokensPerSecond:F2} tokens/s " +
            $"(weights read per token {bytesPerToken / 1e6:F1} MB -> {r.DecodeTokensPerSecond * bytesPerToken / 1e9:F2} GB/s) " +
            $"[{SyntheticLlama.ParameterCount(c) / 1e6:F1}M params, {TorchRuntime.DtypeName(model.Dtype)}, weights {model.WeightStorage.ToString().ToLowerInvariant()}, {model.Device}, {TorchSharp.torch.get_num_threads()} threads]"));
    }
}
