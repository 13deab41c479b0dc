namespace SmoaServe.Text;

/// <summary>A model's tokenizer as loaded from its checkpoint directory (tokenizer.json or tokenizer.model).</summary>
public interface ITextTokenizer
{
    int VocabSize { get; }
    int? BosTokenId { get; }
    /// <summary>The tokenizer's own EOS (tokenizer_config.json eos_token); generation stop ids are in ModelConfig/generation_config.</summary>
    int? EosTokenId { get; }

    /// <summary>Ids of <paramref name="text"/>; with <paramref name="addSpecialTokens"/>, BOS/EOS as the checkpoint's post-processor adds them.</summary>
    IReadOnlyList<int> Encode(string text, bool addSpecialTokens);

    string Decode(IEnumerable<int> ids, bool skipSpecialTokens = true);

    /// <summary>A decoder for streams: feed ids one by one, get text that never splits a multi-byte character.</summary>
    IStreamDecoder CreateStreamDecoder(bool skipSpecialTokens = true);

    /// <summary>Id of a token string such as "&lt;|eot_id|&gt;", or null.</summary>
    int? TokenToId(string token);
}

public interface IStreamDecoder
{
    /// <summary>Adds one id; returns the text that became complete (possibly empty).</summary>
    string Push(int id);
    /// <summary>Whatever is still held back (an incomplete character is emitted as U+FFFD).</summary>
    string Flush();
}

public sealed record ChatMessage(string Role, string Content);

/// <summary>A checkpoint's chat template (Jinja), rendered to the prompt text.</summary>
public interface IChatTemplate
{
    string Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt);

    /// <summary>
    /// Renders messages given as dictionaries (role, content and any extra fields such as tool_calls; values may be
    /// strings, numbers, bools, null, lists, dictionaries or System.Text.Json elements), with extra template
    /// variables (e.g. tools, date_string) that override the defaults. The default implementation keeps only
    /// role and content.
    /// </summary>
    string Render(IReadOnlyList<IReadOnlyDictionary<string, object?>> messages, bool addGenerationPrompt,
                  IReadOnlyDictionary<string, object?>? variables = null) =>
        Render(messages.Select(m => new ChatMessage(
            m.TryGetValue("role", out var r) ? r?.ToString() ?? "" : "",
            m.TryGetValue("content", out var c) ? c?.ToString() ?? "" : "")).ToList(), addGenerationPrompt);
}
