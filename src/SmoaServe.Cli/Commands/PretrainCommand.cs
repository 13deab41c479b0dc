using SmoaServe.Training.Pretraining;

namespace SmoaServe.Cli.Commands;

/// <summary>`smoa pretrain`: trains a small Llama from scratch (tokenizer and every weight) on a JSONL corpus.</summary>
public sealed class PretrainCommand : ICommand
{
    public string Name => "pretrain";
    public string Summary => "train a small Llama from scratch (BPE tokenizer + full-parameter training) on a corpus";
    public string Usage =>
        "usage: smoa pretrain --corpus corpus.jsonl --out DIR [--vocab V] [--hidden H] [--layers L] [--heads NH] [--kv-heads NKV]\n" +
        "                     [--ffn F] [--seq T] [--steps N] [--batch B] [--lr LR] [--warmup W] [--weight-decay WD] [--seed S]\n" +
        "                     [--eval-every N] [--save-every N] [--max-minutes M] [--threads N]\n" +
        "\n" +
        "Writes a Hugging Face Llama checkpoint to DIR (config.json, model.safetensors, tokenizer.json, tokenizer_config.json,\n" +
        "chat_template.jinja, generation_config.json, training_report.json). The tokenizer is trained first unless DIR already\n" +
        "has one. The model is rewritten every --save-every steps; the training state (DIR.pretrain-state.safetensors) is\n" +
        "resumed when present, so an interrupted run continues where it stopped.\n" +
        "\n" +
        "  --corpus FILE     {\"text\"} and {\"messages\"} lines (smoa corpus writes one)\n" +
        "  --vocab V         byte-level BPE vocabulary, special tokens included (default 4096)\n" +
        "  --hidden H --layers L --heads NH --kv-heads NKV --ffn F   model shape (default 256, 4, 4, 2, 704)\n" +
        "  --seq T           packed row length in tokens (default 256)\n" +
        "  --steps N         optimizer steps (default 1000), cosine schedule with --warmup W (default 0.03) of them warmup\n" +
        "  --batch B         packed rows per step (default 16)\n" +
        "  --lr LR           peak learning rate (default 3e-3); --weight-decay WD (default 0.01)\n" +
        "  --seed S          initialisation and data order (default 1)\n" +
        "  --eval-every N    validation loss every N steps (default 100); --save-every N (default 50)\n" +
        "  --max-minutes M   stop after M minutes, saving the model so far (default: no limit)\n" +
        "  --threads N       CPU threads for libtorch (default: libtorch's choice)\n";

    public int Run(string[] args)
    {
        var a = CliArgs.Parse(args, ["corpus", "out", "vocab", "hidden", "layers", "heads", "kv-heads", "ffn", "seq", "steps", "batch", "lr",
            "warmup", "weight-decay", "seed", "eval-every", "save-every", "max-minutes", "threads"]);
        var d = new PretrainOptions();
        var o = new PretrainOptions
        {
            VocabSize = a.GetInt("vocab", d.VocabSize), Hidden = a.GetInt("hidden", d.Hidden), Layers = a.GetInt("layers", d.Layers),
            Heads = a.GetInt("heads", d.Heads), KvHeads = a.GetInt("kv-heads", d.KvHeads), Ffn = a.GetInt("ffn", d.Ffn),
            SequenceLength = a.GetInt("seq", d.SequenceLength), Steps = a.GetInt("steps", d.Steps), BatchSize = a.GetInt("batch", d.BatchSize),
            LearningRate = a.GetDouble("lr", d.LearningRate), WarmupRatio = a.GetDouble("warmup", d.WarmupRatio),
            WeightDecay = a.GetDouble("weight-decay", d.WeightDecay), Seed = (ulong)a.GetInt("seed", (int)d.Seed),
            EvalEvery = a.GetInt("eval-every", d.EvalEvery), SaveEvery = a.GetInt("save-every", d.SaveEvery),
            MaxMinutes = a.GetDouble("max-minutes", 0),
        };
        if (o.Hidden % o.Heads != 0 || o.Heads % o.KvHeads != 0 || (o.Hidden / o.Heads) % 2 != 0)
            throw new UsageException("--hidden must be a multiple of --heads (even head size), --heads a multiple of --kv-heads");
        if (o.Steps < 1 || o.BatchSize < 1 || o.SequenceLength < 8 || o.VocabSize < 300 || o.EvalEvery < 1 || o.SaveEvery < 1)
            throw new UsageException("--steps, --batch, --eval-every, --save-every must be positive, --seq at least 8, --vocab at least 300");
        if (a.Get("threads") is not null) TorchSharp.torch.set_num_threads(a.GetInt("threads", 1));
        new Pretrainer(o, line => Console.WriteLine($"[{DateTime.UtcNow:HH:mm:ss}] {line}"))
            .Run(a.Required("corpus"), a.Required("out"), "smoa pretrain " + string.Join(' ', args));
        return 0;
    }
}
