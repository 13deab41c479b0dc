using System.Text;
using System.Text.Json;

namespace SmoaServe.Training.Data;

/// <summary>
/// Reads an uploaded chat JSONL file line by line into training examples. Every problem is an
/// <see cref="InvalidDataException"/> that names the line (as "&lt;name&gt; line N"): bad JSON, no "messages", a role
/// other than system, developer, user, assistant or tool, no assistant message, too many tokens. No server path appears.
/// </summary>
public static class JsonlValidation
{
    public static readonly IReadOnlySet<string> Roles = new HashSet<string>(StringComparer.Ordinal) { "system", "developer", "user", "assistant", "tool" };

    /// <param name="name">how the file is named in messages (e.g. its file id)</param>
    /// <param name="warn">one message per skipped or truncated line</param>
    public static List<TokenizedExample> Load(string path, string name, ChatDataset dataset, int maxLineBytes, int maxLines, Action<string>? warn = null)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        using var reader = new StreamReader(stream, new UTF8Encoding(false, true), detectEncodingFromByteOrderMarks: true);
        var examples = new List<TokenizedExample>();
        int number = 0;
        while (true)
        {
            string? line;
            try { line = ChatDataset.ReadBoundedLine(reader, maxLineBytes, $"{name} line {number + 1}"); }
            catch (DecoderFallbackException) { throw new InvalidDataException($"{name} line {number + 1}: not valid UTF-8"); }
            if (line is null) break;
            number++;
            if (number > maxLines) throw new InvalidDataException($"{name}: more than {maxLines} lines");
            if (string.IsNullOrWhiteSpace(line)) continue;
            string where = $"{name} line {number}";
            CheckRoles(line, where);
            if (dataset.Tokenize(line, where, number, warn) is { } example) examples.Add(example);
        }
        if (examples.Count == 0) throw new InvalidDataException($"{name}: no conversation with an assistant message to train on");
        return examples;
    }

    /// <summary>The checks the chat dataset leaves to the caller: a known role on every message.</summary>
    private static void CheckRoles(string line, string where)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(line, new JsonDocumentOptions { MaxDepth = 64 }); }
        catch (JsonException e) { throw new InvalidDataException($"{where}: not valid JSON ({e.Message})"); }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("messages", out var messages))
                throw new InvalidDataException($"{where}: missing \"messages\" (each line is {{\"messages\": [...]}})");
            if (messages.ValueKind != JsonValueKind.Array) throw new InvalidDataException($"{where}: \"messages\" must be a list of messages");
            int i = 0;
            foreach (var m in messages.EnumerateArray())
            {
                if (m.ValueKind == JsonValueKind.Object && m.TryGetProperty("role", out var role) && role.ValueKind == JsonValueKind.String
                    && !Roles.Contains(role.GetString()!))
                    throw new InvalidDataException($"{where}: message {i} has the unknown role '{Shorten(role.GetString()!)}' (expected system, developer, user, assistant or tool)");
                i++;
            }
        }
    }

    private static string Shorten(string s) => s.Length <= 40 ? s : s[..40] + "…";
}
