using System.Diagnostics;
using SmoaServe.Engine.Runner;
using SmoaServe.Text;

namespace SmoaServe.Engine.Generation;

/// <summary>One prompt to continue; <see cref="SamplingParams.MaxTokens"/> and <see cref="SamplingParams.StopTokenIds"/> (EOS ids) end it.</summary>
public sealed record SequenceRequest
{
    public required IReadOnlyList<int> PromptIds { get; init; }
    public required SamplingParams Sampling { get; init; }
    /// <summary>Text-level stop strings (need a tokenizer); the text ends before the stop string.</summary>
    public IReadOnlyList<string> StopStrings { get; init; } = [];
    public string? AdapterId { get; init; }
    public int Slot { get; init; }
}

/// <param name="Ids">generated ids only (including a final EOS id, as Hugging Face returns it)</param>
/// <param name="FinishReason">"stop" (EOS or stop string) or "length"</param>
public sealed record SequenceResult(
    IReadOnlyList<int> Ids, string Text, string FinishReason, int PromptTokens, double PrefillSeconds, double DecodeSeconds)
{
    /// <summary>Decode steps per second (tokens after the first, which comes from the prefill).</summary>
    public double DecodeTokensPerSecond => Ids.Count > 1 && DecodeSeconds > 0 ? (Ids.Count - 1) / DecodeSeconds : 0;
}

/// <summary>
/// Single-sequence generation through an <see cref="IModelRunner"/>: chunked prefill of the prompt into one KV slot,
/// then one decode step per token, sampling, EOS ids and stop strings. Used by `smoa generate` (the server batches
/// through its scheduler instead).
/// </summary>
public sealed class SequenceGenerator(IModelRunner runner, ITextTokenizer? tokenizer = null)
{
    public int PrefillChunk { get; init; } = 512;

    /// <param name="onToken">called per generated id with the text that became printable (complete characters, stop strings held back)</param>
    public SequenceResult Generate(SequenceRequest request, Action<int, string>? onToken = null)
    {
        Validate(request);
        var sampler = new Sampler(request.Sampling);
        var stops = new StopStringMatcher(request.StopStrings);
        var decoder = tokenizer?.CreateStreamDecoder(skipSpecialTokens: true);
        var eos = request.Sampling.StopTokenIds;
        int slot = request.Slot;
        runner.FreeSlot(slot);

        var clock = Stopwatch.StartNew();
        float[] logits = PrefillPrompt(request, slot);
        double prefillSeconds = clock.Elapsed.TotalSeconds;
        clock.Restart();

        var ids = new List<int>();
        var text = new System.Text.StringBuilder();
        string finish = "length";
        int position = request.PromptIds.Count;
        while (true)
        {
            int next = sampler.Sample(logits);
            ids.Add(next);
            if (decoder is not null)
            {
                string piece = stops.Push(decoder.Push(next));
                text.Append(piece);
                onToken?.Invoke(next, piece);
            }
            else onToken?.Invoke(next, "");
            if (eos.Contains(next) || stops.Stopped) { finish = "stop"; break; }
            if (ids.Count >= request.Sampling.MaxTokens) break;
            logits = runner.Decode([new DecodeRow(slot, next, position++, request.AdapterId)])[0];
        }
        if (decoder is not null && !stops.Stopped) text.Append(stops.Push(decoder.Flush())).Append(stops.Flush());
        double decodeSeconds = clock.Elapsed.TotalSeconds;
        runner.FreeSlot(slot);
        return new SequenceResult(ids, text.ToString(), finish, request.PromptIds.Count, prefillSeconds, decodeSeconds);
    }

    private float[] PrefillPrompt(SequenceRequest request, int slot)
    {
        var prompt = request.PromptIds.ToArray();
        float[] logits = [];
        for (int start = 0; start < prompt.Length; start += PrefillChunk)
        {
            int n = Math.Min(PrefillChunk, prompt.Length - start);
            logits = runner.Prefill(slot, prompt.AsSpan(start, n), start, request.AdapterId);
        }
        return logits;
    }

    private void Validate(SequenceRequest request)
    {
        if (request.PromptIds.Count == 0) throw new ArgumentException("the prompt is empty");
        int maxNew = request.Sampling.MaxTokens;
        if (maxNew <= 0) throw new ArgumentException($"max new tokens must be positive (got {maxNew})");
        if (request.PromptIds.Count + maxNew - 1 > runner.MaxSequenceLength)
            throw new ArgumentException($"prompt ({request.PromptIds.Count}) + max new tokens ({maxNew}) exceeds the maximum sequence length {runner.MaxSequenceLength}");
        if (request.StopStrings.Count > 0 && tokenizer is null) throw new ArgumentException("stop strings need a tokenizer");
        if (!runner.HasAdapter(request.AdapterId)) throw new ArgumentException($"adapter '{request.AdapterId}' is not loaded");
        if (PrefillChunk <= 0) throw new ArgumentException("prefill chunk must be positive");
    }
}
