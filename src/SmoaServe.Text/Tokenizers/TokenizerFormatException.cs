namespace SmoaServe.Text;

/// <summary>A tokenizer or chat-template file that is missing a key, malformed or uses an unsupported feature.</summary>
public sealed class TokenizerFormatException : Exception
{
    public TokenizerFormatException(string message, Exception? inner = null) : base(message, inner) { }
}
