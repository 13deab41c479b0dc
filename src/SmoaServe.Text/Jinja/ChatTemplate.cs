using SmoaServe.Text.Jinja;

namespace SmoaServe.Text;

/// <summary>A parsed Jinja chat template rendered as HF transformers' apply_chat_template does.</summary>
internal sealed class ChatTemplate : IChatTemplate
{
    readonly List<Stmt> _template;
    readonly Dictionary<string, object?> _specialTokens;

    /// <summary>Parses <paramref name="source"/>; throws <see cref="ChatTemplateException"/> for anything unsupported.</summary>
    public ChatTemplate(string source, IReadOnlyDictionary<string, string?> specialTokens)
    {
        _template = JinjaParser.Parse(source);
        _specialTokens = specialTokens.Where(kv => kv.Value is not null).ToDictionary(kv => kv.Key, kv => (object?)kv.Value);
    }

    public string Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt) =>
        RenderWith(messages.Cast<object?>().ToList(), addGenerationPrompt, null);

    public string Render(IReadOnlyList<IReadOnlyDictionary<string, object?>> messages, bool addGenerationPrompt,
                         IReadOnlyDictionary<string, object?>? variables = null) =>
        RenderWith(messages.Cast<object?>().ToList(), addGenerationPrompt, variables);

    /// <summary>Variables as HF passes them: messages, tools=None, documents=None, add_generation_prompt, the special tokens, then the caller's.</summary>
    string RenderWith(List<object?> messages, bool addGenerationPrompt, IReadOnlyDictionary<string, object?>? variables)
    {
        var vars = new Dictionary<string, object?>(StringComparer.Ordinal)
        {
            ["messages"] = messages,
            ["tools"] = null,
            ["documents"] = null,
            ["add_generation_prompt"] = addGenerationPrompt,
        };
        foreach (var (k, v) in _specialTokens) vars[k] = v;
        if (variables is not null) foreach (var (k, v) in variables) vars[k] = v;
        return JinjaInterpreter.Render(_template, vars);
    }
}
