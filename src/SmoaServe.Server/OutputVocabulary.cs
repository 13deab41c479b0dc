using System.Text;
using SmoaServe.Engine.Hosting;
using SmoaServe.Text.Structured;

namespace SmoaServe.Server;

/// <summary>
/// The served model's vocabulary as output bytes, built on first use: what constrained decoding masks over, and each
/// token's text and bytes for logprobs. Compiled output grammars are cached by schema.
/// </summary>
public sealed class OutputVocabulary(EngineHost engine)
{
    private readonly Lazy<TokenVocabulary> _vocabulary = new(() => TokenVocabulary.From(engine.Tokenizer, engine.EosTokenIds));
    private readonly Dictionary<int, (string Text, byte[] Bytes)> _tokens = new();

    public TokenVocabulary Vocabulary => _vocabulary.Value;
    public GrammarCache Grammars { get; } = new();

    /// <summary>
    /// A token's text (its bytes as UTF-8; a piece of a multi-byte character reads as U+FFFD, its bytes stay exact) and
    /// bytes; special tokens, which have no output bytes, as their written form.
    /// </summary>
    public (string Text, byte[] Bytes) Token(int id)
    {
        lock (_tokens)
            if (_tokens.TryGetValue(id, out var known)) return known;
        var bytes = Vocabulary.TokenBytes(id).ToArray();
        string text = bytes.Length > 0 ? Encoding.UTF8.GetString(bytes) : engine.Tokenizer.Decode([id], skipSpecialTokens: false);
        if (bytes.Length == 0) bytes = Encoding.UTF8.GetBytes(text);
        lock (_tokens)
        {
            if (_tokens.Count < 1 << 20) _tokens[id] = (text, bytes);
        }
        return (text, bytes);
    }
}
