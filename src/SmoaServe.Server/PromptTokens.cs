using System.Text.Json;
using SmoaServe.Engine.Hosting;
using SmoaServe.Text;

namespace SmoaServe.Server;

/// <summary>
/// Prompt text to ids with the work bounded by the model's context, not by the body: a prompt that cannot fit is refused
/// (400, context_length_exceeded) after tokenizing about a context's worth of it (<see cref="BoundedEncoding"/>), and a
/// chat whose messages alone cannot fit is refused before its template is rendered.
/// </summary>
public static class PromptTokens
{
    /// <summary>The most prompt tokens a request can have (at least one completion token must fit).</summary>
    public static int Budget(EngineHost engine) => Math.Max(engine.MaxSequenceLength - 1, 0);

    /// <summary>Ids of a text prompt of at most <paramref name="budget"/> tokens (default: <see cref="Budget"/>).</summary>
    public static IReadOnlyList<int> Encode(EngineHost engine, string text, bool addSpecialTokens, string param, int? budget = null)
    {
        int limit = budget ?? Budget(engine);
        return engine.Tokenizer.EncodeWithin(text, addSpecialTokens, limit, out int counted) ?? throw TooLong(engine, counted, param);
    }

    /// <summary>The chat template rendered, then tokenized within the budget; contents that alone exceed it are refused unrendered
    /// (every template includes each message's content).</summary>
    /// <param name="render">renders the template another way (e.g. with tools and every message field); default: roles and contents</param>
    public static IReadOnlyList<int> Chat(EngineHost engine, IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, bool addSpecialTokens, int? budget = null,
        Func<IChatTemplate, string>? render = null)
    {
        int limit = budget ?? Budget(engine);
        long chars = messages.Sum(m => (long)m.Content.Length);
        if (chars > Math.Max(4096L, 8L * (limit + 1L)))
        {
            int total = 0;
            foreach (var m in messages)
            {
                var (start, length) = Trimmed(m.Content);
                var ids = engine.Tokenizer.EncodeWithin(m.Content, start, length, addSpecialTokens: false, limit - total, out int counted)
                    ?? throw TooLong(engine, total + counted, "messages");
                total += ids.Count;
            }
        }
        var template = engine.ChatTemplate ?? throw ApiException.BadRequest("This model has no chat template; use /v1/completions.", "messages");
        string text;
        try { text = render is null ? template.Render(messages, addGenerationPrompt) : render(template); }
        catch (Exception e) when (e is not ApiException) { throw ApiException.BadRequest("The chat template failed on these messages: " + e.Message, "messages"); }
        return Encode(engine, text, addSpecialTokens, "messages", limit);
    }

    /// <summary>Where text.Trim() would start and how long it would be (templates trim contents), without the copy.</summary>
    private static (int Start, int Length) Trimmed(string text)
    {
        int start = 0, end = text.Length;
        while (start < end && char.IsWhiteSpace(text[start])) start++;
        while (end > start && char.IsWhiteSpace(text[end - 1])) end--;
        return (start, end - start);
    }

    /// <summary>Raw string values at least this long (bytes) are checked by <see cref="LargeBodyCheck"/>.</summary>
    public const int LongStringBytes = 64 * 1024;

    /// <summary>
    /// For a large body, before any document or string is built from it: every string value of at least
    /// <see cref="LongStringBytes"/> has its first <see cref="LongStringBytes"/> bytes decoded and tokenized within the
    /// context; a string whose beginning alone exceeds the context can be no part of a request this model serves, so the
    /// request is refused (400, context_length_exceeded) without materialising the rest (a 4 MB prompt would otherwise
    /// cost two body-sized copies and an 8 MB string before the refusal). Strings that pass are checked exactly later.
    /// </summary>
    public static RequestParser.LargeBodyCheck LargeBodyCheck(EngineHost engine) => json =>
    {
        var reader = new Utf8JsonReader(json, new JsonReaderOptions { MaxDepth = 32 });
        string? property = null;
        while (reader.Read())
        {
            if (reader.TokenType == JsonTokenType.PropertyName) { property = reader.ValueSpan.Length <= 64 ? reader.GetString() : null; continue; }
            if (reader.TokenType != JsonTokenType.String || reader.HasValueSequence || reader.ValueSpan.Length < LongStringBytes) continue;
            if (DecodePrefix(reader.ValueSpan[..LongStringBytes]) is not { } prefix) continue;
            if (engine.Tokenizer.EncodeWithin(prefix, addSpecialTokens: false, engine.MaxSequenceLength, out int counted) is null)
                throw TooLong(engine, counted, property is "content" or "text" ? "messages" : property ?? "prompt");
        }
    };

    /// <summary>The text of the beginning of a raw (escaped) JSON string, cut before an escape or multi-byte character that
    /// the cut would split; null when it cannot be decoded.</summary>
    private static string? DecodePrefix(ReadOnlySpan<byte> raw)
    {
        var quoted = new byte[raw.Length + 2];
        for (int cut = raw.Length; cut > 0 && cut > raw.Length - 16; cut--)
        {
            quoted[0] = (byte)'"';
            raw[..cut].CopyTo(quoted.AsSpan(1));
            quoted[cut + 1] = (byte)'"';
            try
            {
                var r = new Utf8JsonReader(quoted.AsSpan(0, cut + 2));
                if (r.Read() && r.TokenType == JsonTokenType.String) return r.GetString();
            }
            catch (Exception e) when (e is JsonException or InvalidOperationException) { }
        }
        return null;
    }

    private static ApiException TooLong(EngineHost engine, int counted, string param) => ApiException.BadRequest(
        $"This model's maximum context length is {engine.MaxSequenceLength} tokens. However, your prompt has more than {counted} tokens " +
        "(counting stopped there). Please reduce the length of the prompt.", param, "context_length_exceeded");
}
