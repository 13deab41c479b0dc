namespace SmoaServe.Text;

/// <summary>A chat template that cannot be parsed (thrown at load) or that fails while rendering (raise_exception, type errors).</summary>
public sealed class ChatTemplateException : Exception
{
    public ChatTemplateException(string message, Exception? inner = null) : base(message, inner) { }
}
