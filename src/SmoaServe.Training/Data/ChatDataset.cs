using System.Text;
using System.Text.Json;
using SmoaServe.Text;

namespace SmoaServe.Training.Data;

/// <summary>
/// One training sequence: token ids and, per token, whether it is trained on (an assistant token of a message with
/// weight 1). Position t's logits are trained to predict token t+1 when <see cref="Trained"/>[t+1] is set.
/// </summary>
/// <param name="Line">1-based line of the JSONL file it came from (0 for sequences built in code)</param>
public sealed record TokenizedExample(int Line, int[] Ids, bool[] Trained)
{
    /// <summary>Tokens whose prediction is trained (the first token is never predicted).</summary>
    public int TrainedCount => Trained.Skip(1).Count(t => t);
}

/// <summary>How chat JSONL lines become <see cref="TokenizedExample"/>s.</summary>
public sealed record ChatDataOptions
{
    /// <summary>Longest sequence, in tokens.</summary>
    public int MaxSequenceLength { get; init; } = 2048;
    /// <summary>Cut longer conversations to <see cref="MaxSequenceLength"/> (with a warning per line) instead of failing.</summary>
    public bool Truncate { get; init; }
    public int MaxLineChars { get; init; } = 16 << 20;
    /// <summary>Messages per conversation (each assistant message renders the conversation up to it twice).</summary>
    public int MaxMessages { get; init; } = 512;
    public int MaxLines { get; init; } = 10_000_000;
}

/// <summary>
/// Chat fine-tuning data in the OpenAI format: one JSON object per line, <c>{"messages": [{"role", "content",
/// "weight"?}, ...], "tools"?: [...]}</c>. Each conversation is rendered with the model's chat template and tokenized
/// piece by piece: for every assistant message i, the conversation before it rendered with add_generation_prompt (the
/// prompt the model sees when serving) is masked, and what rendering message i adds after that prompt (its content and
/// end-of-turn tokens) is trained on, unless the message has "weight": 0. Each piece is tokenized on its own, so the
/// trained tokens follow exactly the tokens of the prompt the server would feed.
/// </summary>
public sealed class ChatDataset(ITextTokenizer tokenizer, IChatTemplate template, ChatDataOptions? options = null)
{
    private readonly ChatDataOptions _options = options ?? new ChatDataOptions();

    /// <summary>Reads a JSONL file; problems in a line are <see cref="InvalidDataException"/>s naming file and line.</summary>
    /// <param name="warn">receives one message per truncated or skipped line</param>
    public List<TokenizedExample> Load(string path, Action<string>? warn = null)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"training data not found: {path}", path);
        using var reader = new StreamReader(path, Encoding.UTF8, detectEncodingFromByteOrderMarks: true);
        var examples = new List<TokenizedExample>();
        int lineNumber = 0;
        while (ReadBoundedLine(reader, _options.MaxLineChars, $"{path}:{lineNumber + 1}") is { } line)
        {
            lineNumber++;
            if (lineNumber > _options.MaxLines) throw new InvalidDataException($"{path}: more than {_options.MaxLines} lines");
            if (string.IsNullOrWhiteSpace(line)) continue;
            string where = $"{path}:{lineNumber}";
            var example = Tokenize(line, where, lineNumber, warn);
            if (example is not null) examples.Add(example);
        }
        if (examples.Count == 0) throw new InvalidDataException($"{path}: no conversation with tokens to train on");
        return examples;
    }

    /// <summary>One JSONL line → an example, or null (with a warning) when nothing in it is trained on.</summary>
    public TokenizedExample? Tokenize(string json, string where, int line = 0, Action<string>? warn = null)
    {
        var (messages, weights, variables) = Parse(json, where);
        var ids = new List<int>();
        var trained = new List<bool>();
        string rendered = "";
        for (int i = 0; i < messages.Count; i++)
        {
            if (weights[i] is not { } weight) continue;          // not an assistant message
            string prompt = Render(messages.Take(i).ToList(), true, variables, where);
            string full = Render(messages.Take(i + 1).ToList(), false, variables, where);
            if (!prompt.StartsWith(rendered, StringComparison.Ordinal) || !full.StartsWith(prompt, StringComparison.Ordinal))
                throw new InvalidDataException($"{where}: the chat template does not render this conversation incrementally (the prompt before message {i} is not a prefix of the conversation that includes it), so its assistant tokens cannot be told apart");
            Append(prompt[rendered.Length..], false);
            Append(full[prompt.Length..], weight);
            rendered = full;
        }
        if (ids.Count == 0) throw new InvalidDataException($"{where}: no assistant message to train on");

        if (ids.Count > _options.MaxSequenceLength)
        {
            if (!_options.Truncate)
                throw new InvalidDataException($"{where}: {ids.Count} tokens, more than the limit of {_options.MaxSequenceLength} (raise the sequence length limit or let long lines be truncated)");
            warn?.Invoke($"{where}: {ids.Count} tokens, truncated to {_options.MaxSequenceLength}");
            ids.RemoveRange(_options.MaxSequenceLength, ids.Count - _options.MaxSequenceLength);
            trained.RemoveRange(_options.MaxSequenceLength, trained.Count - _options.MaxSequenceLength);
        }
        var example = new TokenizedExample(line, ids.ToArray(), trained.ToArray());
        if (example.TrainedCount == 0)
        {
            warn?.Invoke($"{where}: skipped, no assistant token to train on{(ids.Count == _options.MaxSequenceLength ? " within the length limit" : " (every assistant message has weight 0)")}");
            return null;
        }
        return example;

        void Append(string text, bool isTrained)
        {
            if (text.Length == 0) return;
            var piece = tokenizer.Encode(text, addSpecialTokens: false);
            ids.AddRange(piece);
            trained.AddRange(Enumerable.Repeat(isTrained, piece.Count));
        }
    }

    private string Render(List<IReadOnlyDictionary<string, object?>> messages, bool addGenerationPrompt,
        IReadOnlyDictionary<string, object?>? variables, string where)
    {
        try { return template.Render(messages, addGenerationPrompt, variables); }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            throw new InvalidDataException($"{where}: the chat template failed on this conversation: {e.Message}", e);
        }
    }

    /// <summary>The line's messages (as template dictionaries), each message's weight (null: not an assistant message), and template variables.</summary>
    private (List<IReadOnlyDictionary<string, object?>> Messages, List<bool?> Weights, IReadOnlyDictionary<string, object?>? Variables) Parse(string json, string where)
    {
        JsonElement root;
        try { root = JsonDocument.Parse(json, new JsonDocumentOptions { MaxDepth = 64 }).RootElement; }
        catch (JsonException e) { throw new InvalidDataException($"{where}: not valid JSON ({e.Message})"); }
        if (root.ValueKind != JsonValueKind.Object) throw new InvalidDataException($"{where}: expected a JSON object with \"messages\"");
        if (!root.TryGetProperty("messages", out var list) || list.ValueKind != JsonValueKind.Array)
            throw new InvalidDataException($"{where}: \"messages\" must be a list of messages");
        if (list.GetArrayLength() == 0 || list.GetArrayLength() > _options.MaxMessages)
            throw new InvalidDataException($"{where}: \"messages\" must hold 1 to {_options.MaxMessages} messages");

        var messages = new List<IReadOnlyDictionary<string, object?>>();
        var weights = new List<bool?>();
        int index = 0;
        foreach (var m in list.EnumerateArray())
        {
            string at = $"{where}: message {index++}";
            if (m.ValueKind != JsonValueKind.Object) throw new InvalidDataException($"{at} is not an object");
            if (!m.TryGetProperty("role", out var roleElement) || roleElement.ValueKind != JsonValueKind.String || roleElement.GetString() is not { Length: > 0 } role)
                throw new InvalidDataException($"{at}: \"role\" must be a non-empty string");
            var message = new Dictionary<string, object?>(StringComparer.Ordinal) { ["role"] = role };
            foreach (var property in m.EnumerateObject())
            {
                switch (property.Name)
                {
                    case "role" or "weight": break;
                    case "content": message["content"] = Content(property.Value, at); break;
                    default: message[property.Name] = property.Value; break;
                }
            }
            if (!message.ContainsKey("content")) throw new InvalidDataException($"{at}: \"content\" is missing");
            bool? weight = null;
            if (m.TryGetProperty("weight", out var w))
            {
                if (role != "assistant") throw new InvalidDataException($"{at}: \"weight\" is only allowed on assistant messages");
                weight = w.ValueKind == JsonValueKind.Number && w.TryGetInt32(out int v) && v is 0 or 1 ? v == 1
                    : throw new InvalidDataException($"{at}: \"weight\" must be 0 or 1");
            }
            else if (role == "assistant") weight = true;
            messages.Add(message);
            weights.Add(weight);
        }
        Dictionary<string, object?>? variables = null;
        if (root.TryGetProperty("tools", out var tools) && tools.ValueKind != JsonValueKind.Null)
        {
            if (tools.ValueKind != JsonValueKind.Array) throw new InvalidDataException($"{where}: \"tools\" must be a list");
            variables = new Dictionary<string, object?> { ["tools"] = tools };
        }
        return (messages, weights, variables);
    }

    /// <summary>A string; null; or a list of {"type": "text", "text": ...} parts, joined.</summary>
    private static string? Content(JsonElement content, string at)
    {
        switch (content.ValueKind)
        {
            case JsonValueKind.String: return content.GetString();
            case JsonValueKind.Null: return null;
            case JsonValueKind.Array:
                var text = new StringBuilder();
                foreach (var part in content.EnumerateArray())
                {
                    if (part.ValueKind != JsonValueKind.Object || !part.TryGetProperty("type", out var type) || type.GetString() != "text"
                        || !part.TryGetProperty("text", out var t) || t.ValueKind != JsonValueKind.String)
                        throw new InvalidDataException($"{at}: content parts must be {{\"type\": \"text\", \"text\": ...}}");
                    text.Append(t.GetString());
                }
                return text.ToString();
            default: throw new InvalidDataException($"{at}: \"content\" must be a string, null or a list of text parts");
        }
    }

    /// <summary>
    /// The next line without its line break, or null at the end; a line longer than <paramref name="maxChars"/> is an
    /// error named <paramref name="where"/> (the file and line, as the caller names them).
    /// </summary>
    internal static string? ReadBoundedLine(StreamReader reader, int maxChars, string where)
    {
        var line = new StringBuilder();
        int c;
        bool any = false;
        while ((c = reader.Read()) >= 0)
        {
            any = true;
            if (c == '\n') break;
            if (line.Length >= maxChars) throw new InvalidDataException($"{where}: line longer than {maxChars} characters");
            line.Append((char)c);
        }
        if (!any) return null;
        if (line.Length > 0 && line[^1] == '\r') line.Length--;
        return line.ToString();
    }
}
