using System.Text.Json;
using SmoaServe.Engine.Checkpoints;
using SmoaServe.Engine.Model;
using SmoaServe.Text;
using SmoaServe.Text.Tokenizers;
using SmoaServe.Training.Data;
using SmoaServe.Training.Optim;
using TorchSharp;

namespace SmoaServe.Training.Pretraining;

public sealed record PretrainOptions
{
    public int VocabSize { get; init; } = 4096;
    public int Hidden { get; init; } = 256;
    public int Layers { get; init; } = 4;
    public int Heads { get; init; } = 4;
    public int KvHeads { get; init; } = 2;
    public int Ffn { get; init; } = 704;
    public int SequenceLength { get; init; } = 256;
    public int Steps { get; init; } = 1000;
    public int BatchSize { get; init; } = 16;
    public double LearningRate { get; init; } = 3e-3;
    public double WarmupRatio { get; init; } = 0.03;
    public double WeightDecay { get; init; } = 0.01;
    public ulong Seed { get; init; } = 1;
    /// <summary>Every n-th example is held out for validation.</summary>
    public int ValidationEvery { get; init; } = 50;
    public int MaxValidationExamples { get; init; } = 400;
    public int EvalEvery { get; init; } = 100;
    public int SaveEvery { get; init; } = 50;
    /// <summary>
    /// Wall-clock budget in minutes (0: none). From a quarter of the budget on, the run is planned to end with the
    /// budget at the measured pace (never beyond the requested steps) and the cosine decay is fitted to that end, so a
    /// slow or shared machine still ends with an annealed model.
    /// </summary>
    public double MaxMinutes { get; init; }
}

/// <summary>
/// Pretrains a small Llama from scratch on a JSONL corpus (<c>{"text"}</c> documents and <c>{"messages"}</c>
/// conversations, as <see cref="WordNetCorpus"/> writes): trains a byte-level BPE tokenizer on the corpus (unless the
/// output folder already has one), writes it with a Llama 3 style chat template, then trains every weight of a
/// randomly initialised model with AdamW on packed rows. Documents are trained on every token (BOS … end_of_text);
/// conversations on their assistant tokens and end-of-turn tokens (the prompt is masked), exactly as `smoa train`
/// renders them. The output folder is a Hugging Face Llama checkpoint, rewritten every <see cref="PretrainOptions.SaveEvery"/>
/// steps (so a stopped run still leaves a model), with the training state beside it for resuming.
/// </summary>
public sealed class Pretrainer
{
    public const string Bos = "<|begin_of_text|>", EndOfText = "<|end_of_text|>", StartHeader = "<|start_header_id|>",
        EndHeader = "<|end_header_id|>", EndOfTurn = "<|eot_id|>";
    public static readonly string[] Specials = [Bos, EndOfText, StartHeader, EndHeader, EndOfTurn];

    /// <summary>Llama 3's chat template: each message as header, blank line, trimmed content, &lt;|eot_id|&gt;; BOS first.</summary>
    public const string ChatTemplate =
        "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'" +
        "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}" +
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

    private readonly PretrainOptions _o;
    private readonly Action<string> _log;

    public Pretrainer(PretrainOptions options, Action<string> log)
    {
        _o = options;
        _log = log;
    }

    /// <summary>Trains the tokenizer on the corpus and writes tokenizer.json, tokenizer_config.json and chat_template.jinja.</summary>
    public void TrainTokenizer(string corpusPath, string outDir)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var texts = new List<string>();
        foreach (var line in File.ReadLines(corpusPath))
        {
            if (string.IsNullOrWhiteSpace(line)) continue;
            using var doc = JsonDocument.Parse(line);
            if (doc.RootElement.TryGetProperty("text", out var t)) texts.Add(t.GetString() ?? "");
            else if (doc.RootElement.TryGetProperty("messages", out var ms))
                foreach (var m in ms.EnumerateArray())
                    texts.Add((m.GetProperty("role").GetString() ?? "") + "\n\n" + (m.GetProperty("content").GetString() ?? ""));
        }
        var result = BpeTrainer.Train(texts, _o.VocabSize, Specials);
        Directory.CreateDirectory(outDir);
        BpeTrainer.WriteTokenizerJson(Path.Combine(outDir, "tokenizer.json"), result, Bos);
        var config = new Dictionary<string, object>
        {
            ["bos_token"] = Bos,
            ["eos_token"] = EndOfTurn,
            ["pad_token"] = EndOfText,
            ["model_max_length"] = _o.SequenceLength * 4,
            ["tokenizer_class"] = "PreTrainedTokenizerFast",
            ["clean_up_tokenization_spaces"] = false,
        };
        AtomicFile.WriteAllText(Path.Combine(outDir, "tokenizer_config.json"), JsonSerializer.Serialize(config, new JsonSerializerOptions { WriteIndented = true }) + "\n");
        AtomicFile.WriteAllText(Path.Combine(outDir, "chat_template.jinja"), ChatTemplate);
        _log($"tokenizer: {result.Vocab.Count} tokens ({result.Merges.Count} merges) from {texts.Count} texts in {clock.Elapsed.TotalSeconds:F1} s");
    }

    /// <summary>Tokenizes the corpus with the output folder's tokenizer and template; splits off the validation examples.</summary>
    public (List<TokenizedExample> Train, List<TokenizedExample> Validation) Tokenize(string corpusPath, ITextTokenizer tokenizer, IChatTemplate template)
    {
        int bos = tokenizer.TokenToId(Bos) ?? throw new InvalidDataException($"tokenizer has no {Bos}");
        int end = tokenizer.TokenToId(EndOfText) ?? throw new InvalidDataException($"tokenizer has no {EndOfText}");
        var chats = new ChatDataset(tokenizer, template, new ChatDataOptions { MaxSequenceLength = _o.SequenceLength, Truncate = true });
        var train = new List<TokenizedExample>();
        var validation = new List<TokenizedExample>();
        int lineNumber = 0, dropped = 0;
        foreach (var line in File.ReadLines(corpusPath))
        {
            lineNumber++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            TokenizedExample? example;
            using (var doc = JsonDocument.Parse(line))
            {
                if (doc.RootElement.TryGetProperty("text", out var t))
                {
                    var ids = new List<int> { bos };
                    ids.AddRange(tokenizer.Encode(t.GetString() ?? "", addSpecialTokens: false));
                    ids.Add(end);
                    if (ids.Count > _o.SequenceLength) { dropped++; continue; }
                    example = new TokenizedExample(lineNumber, ids.ToArray(), Enumerable.Repeat(true, ids.Count).ToArray());
                }
                else example = chats.Tokenize(line, $"{corpusPath}:{lineNumber}", lineNumber, _ => dropped++);
            }
            if (example is null) continue;
            if (lineNumber % _o.ValidationEvery == 0) { if (validation.Count < _o.MaxValidationExamples) validation.Add(example); }
            else train.Add(example);
        }
        _log($"corpus: {train.Count} training examples ({train.Sum(e => (long)e.Ids.Length)} tokens), {validation.Count} validation examples, {dropped} dropped or truncated");
        return (train, validation);
    }

    public ModelConfig ModelConfigFor(ITextTokenizer tokenizer) => new()
    {
        HiddenSize = _o.Hidden, IntermediateSize = _o.Ffn, NumLayers = _o.Layers, NumHeads = _o.Heads, NumKvHeads = _o.KvHeads,
        HeadDim = _o.Hidden / _o.Heads, VocabSize = tokenizer.VocabSize, RmsNormEps = 1e-5, MaxPositionEmbeddings = _o.SequenceLength * 4,
        TieWordEmbeddings = true, Rope = new RopeConfig("default", 10000.0),
    };

    /// <summary>Pretrains into <paramref name="outDir"/>; resumes from the training state beside it when one exists.</summary>
    public void Run(string corpusPath, string outDir, string commandLine)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        if (!File.Exists(Path.Combine(outDir, "tokenizer.json"))) TrainTokenizer(corpusPath, outDir);
        var tokenizer = TokenizerLoader.Load(outDir);
        var template = ChatTemplateLoader.Load(outDir) ?? throw new InvalidDataException($"{outDir}: no chat template");
        var (train, validation) = Tokenize(corpusPath, tokenizer, template);
        var config = ModelConfigFor(tokenizer);
        int bos = tokenizer.TokenToId(Bos)!.Value;
        int[] eos = [tokenizer.TokenToId(EndOfTurn)!.Value, tokenizer.TokenToId(EndOfText)!.Value];
        var data = new TrainingData(train, _o.SequenceLength, packing: true);

        using var model = FullParameters.CreateRandom(config, _o.Seed);
        using var trainable = new FullParameters(model);
        _log($"model: {trainable.Count:N0} parameters (hidden {config.HiddenSize}, {config.NumLayers} layers, {config.NumHeads} heads, {config.NumKvHeads} KV heads, ffn {config.IntermediateSize}, vocab {config.VocabSize}, tied embeddings)");
        var options = new TrainingOptions
        {
            BatchSize = _o.BatchSize, LearningRate = _o.LearningRate, WarmupRatio = _o.WarmupRatio, WeightDecay = _o.WeightDecay,
            MaxGradNorm = 1.0, Beta1 = 0.9, Beta2 = 0.95, Seed = _o.Seed, PadTokenId = eos[1],
        };
        using var trainer = new Trainer(model, trainable, options);
        int warmupSteps = (int)Math.Ceiling(_o.Steps * _o.WarmupRatio);
        int plannedSteps = _o.Steps;
        double LearningRateAt(int step, int total) => step < warmupSteps ? _o.LearningRate * step / Math.Max(1, warmupSteps)
            : _o.LearningRate * 0.5 * (1 + Math.Cos(Math.PI * Math.Min(1.0, (double)(step - warmupSteps) / Math.Max(1, total - warmupSteps))));
        string statePath = Path.TrimEndingDirectorySeparator(Path.GetFullPath(outDir)) + ".pretrain-state.safetensors";
        if (File.Exists(statePath))
        {
            trainer.LoadCheckpoint(statePath);
            _log($"resumed at step {trainer.CompletedSteps} from {statePath}");
        }
        int startStep = trainer.CompletedSteps;
        var loopClock = System.Diagnostics.Stopwatch.StartNew();

        int rowsPerEpoch = data.EpochRows(0, _o.Seed).Count;
        _log($"training: {_o.Steps} steps of {_o.BatchSize} packed rows of ≤{_o.SequenceLength} tokens ({rowsPerEpoch} rows per epoch)");
        double tokens = 0, lossSum = 0, seconds = 0, trainSeconds = 0;
        int window = 0;
        Evaluation? last = null;
        List<TokenizedExample[]>? rows = null;
        int rowsEpoch = -1;
        bool stoppedEarly = false;
        while (trainer.CompletedSteps < plannedSteps)
        {
            int step = trainer.CompletedSteps;
            long first = (long)step * _o.BatchSize;
            int epoch = (int)(first / rowsPerEpoch);
            if (epoch != rowsEpoch) { rows = data.EpochRows(epoch, _o.Seed); rowsEpoch = epoch; }
            var batchRows = Enumerable.Range(0, _o.BatchSize).Select(i => rows![(int)((first + i) % rowsPerEpoch)]).ToList();
            // From a quarter of the budget on, the planned steps follow the measured pace (at most the requested steps).
            if (_o.MaxMinutes > 0 && step % 10 == 0 && step > startStep && clock.Elapsed.TotalMinutes >= _o.MaxMinutes / 4)
            {
                double perStep = loopClock.Elapsed.TotalSeconds / (step - startStep);
                int fits = Math.Clamp(step + (int)((_o.MaxMinutes * 60 - clock.Elapsed.TotalSeconds) / perStep), step + 1, _o.Steps);
                if (Math.Abs(fits - plannedSteps) > plannedSteps / 20)
                {
                    plannedSteps = fits;
                    _log($"at {perStep:F2} s per step {plannedSteps} steps fit in {_o.MaxMinutes} min: the cosine decay now ends there");
                }
            }
            StepResult r;
            using (var batch = TrainingBatch.Packed(batchRows, model.Device, options.PadTokenId))
                r = trainer.Step([batch], LearningRateAt(step, plannedSteps));
            tokens += r.Tokens; lossSum += r.Loss; seconds += r.Seconds; trainSeconds += r.Seconds; window++;
            if (r.Step % 10 == 0 || r.Step == 1)
            {
                _log($"step {r.Step}/{plannedSteps} epoch {epoch + 1} loss {lossSum / window:F3} lr {r.LearningRate:E2} grad {r.GradNorm:F2} {tokens / seconds:F0} tok/s{(r.Skipped ? " (skipped: non-finite gradient)" : "")}");
                lossSum = 0; window = 0; tokens = 0; seconds = 0;
            }
            bool timeUp = _o.MaxMinutes > 0 && clock.Elapsed.TotalMinutes >= _o.MaxMinutes * 1.1;
            bool done = trainer.CompletedSteps >= plannedSteps;
            if (r.Step % _o.EvalEvery == 0 || done || timeUp)
            {
                last = trainer.Evaluate(validation, 16);
                _log($"validation at step {r.Step}: loss {last.Loss:F3} (perplexity {Math.Exp(last.Loss):F1}), token accuracy {last.Accuracy:P1}, {last.ScoredTokens} tokens");
            }
            if (r.Step % _o.SaveEvery == 0 || done || timeUp)
            {
                FullParameters.SaveHuggingFace(model, outDir, bos, eos);
                trainer.SaveCheckpoint(statePath);
                WriteReport(outDir, commandLine, trainer.CompletedSteps, trainable.Count, train, last, clock.Elapsed.TotalMinutes);
            }
            if (timeUp && !done) { stoppedEarly = true; _log($"time limit of {_o.MaxMinutes} min reached at step {trainer.CompletedSteps}; the model so far is saved"); break; }
        }
        if (!stoppedEarly) _log($"done: {trainer.CompletedSteps} steps in {clock.Elapsed.TotalMinutes:F1} min; model in {outDir}");
    }

    private void WriteReport(string outDir, string commandLine, int steps, long parameters, List<TokenizedExample> train, Evaluation? validation, double minutes)
    {
        var report = new Dictionary<string, object?>
        {
            ["command"] = commandLine,
            ["parameters"] = parameters,
            ["steps"] = steps,
            ["steps_requested"] = _o.Steps,
            ["batch_rows"] = _o.BatchSize,
            ["sequence_length"] = _o.SequenceLength,
            ["training_examples"] = train.Count,
            ["training_tokens_per_epoch"] = train.Sum(e => (long)e.Ids.Length),
            ["validation_loss"] = validation?.Loss,
            ["validation_token_accuracy"] = validation?.Accuracy,
            ["wall_clock_minutes"] = Math.Round(minutes, 1),
        };
        AtomicFile.WriteAllText(Path.Combine(outDir, "training_report.json"), JsonSerializer.Serialize(report, new JsonSerializerOptions { WriteIndented = true }) + "\n");
    }
}
