using System.Security.Cryptography;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace SmoaServe.Text.Tools;

/// <summary>An OpenAI tool call: {"id", "type": "function", "function": {"name", "arguments"}} (arguments: JSON text).</summary>
public sealed record ToolCall(string Id, string Name, string Arguments)
{
    public string Type => "function";

    /// <summary>A fresh id in OpenAI's form ("call_" and 24 letters/digits).</summary>
    public static string NewId()
    {
        const string alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        return "call_" + RandomNumberGenerator.GetString(alphabet, 24);
    }
}

/// <summary>
/// A piece of a streamed assistant message: text content, or a complete tool call at position Index of the
/// message's tool_calls (sent whole, as one delta with id, name and the full arguments).
/// </summary>
public sealed record ToolStreamDelta(string? Content, int Index = -1, ToolCall? Call = null);

/// <summary>
/// Llama 3.1 JSON tool calls in generated text: the output (optionally after &lt;|python_tag|&gt;) is one or more
/// {"name": …, "parameters": {…}} objects ("arguments" also accepted), separated by whitespace or ';'. Output that
/// starts otherwise is plain content; output that starts like a call but does not parse as one is returned as
/// content too. Feed text as it is generated (<see cref="Push"/>), then <see cref="Finish"/>.
/// </summary>
public sealed class ToolCallStreamParser(IReadOnlySet<string>? knownFunctions = null, Func<string>? newId = null)
{
    public const string PythonTag = "<|python_tag|>";

    enum Mode { Undecided, Calls, Content }

    readonly StringBuilder _buffer = new();     // undecided or call text not yet turned into calls
    readonly Func<string> _newId = newId ?? ToolCall.NewId;
    Mode _mode = Mode.Undecided;
    int _calls;
    // scanner over _buffer for the current top-level object
    int _scan, _depth, _objectStart = -1;
    bool _inString, _escape;

    public int CallCount => _calls;

    public IReadOnlyList<ToolStreamDelta> Push(string text)
    {
        var output = new List<ToolStreamDelta>();
        if (text.Length == 0) return output;
        if (_mode == Mode.Content) { output.Add(new ToolStreamDelta(text)); return output; }
        _buffer.Append(text);
        if (_mode == Mode.Undecided) Decide(output);
        if (_mode == Mode.Calls) Scan(output, final: false);
        return output;
    }

    public IReadOnlyList<ToolStreamDelta> Finish()
    {
        var output = new List<ToolStreamDelta>();
        if (_mode == Mode.Calls) Scan(output, final: true);
        if (_buffer.Length > 0 && (_mode != Mode.Calls || _buffer.ToString().Trim().Trim(';').Trim().Length > 0))
            output.Add(new ToolStreamDelta(_buffer.ToString()));
        _buffer.Clear();
        _mode = Mode.Content;
        return output;
    }

    /// <summary>Content unless the first non-blank text is '{' or the python tag (held back while it could still be the tag).</summary>
    void Decide(List<ToolStreamDelta> output)
    {
        var s = _buffer.ToString();
        var t = s.TrimStart();
        if (t.Length == 0) return;
        if (t.StartsWith(PythonTag, StringComparison.Ordinal))
        {
            _buffer.Clear().Append(t[PythonTag.Length..]);
            _mode = Mode.Calls;
            return;
        }
        if (PythonTag.StartsWith(t, StringComparison.Ordinal)) return;
        if (t[0] == '{') { _buffer.Clear().Append(t); _mode = Mode.Calls; return; }
        _mode = Mode.Content;
        output.Add(new ToolStreamDelta(s));
        _buffer.Clear();
    }

    /// <summary>Finds complete top-level objects; each must be a tool call, or everything from there on is content.</summary>
    void Scan(List<ToolStreamDelta> output, bool final)
    {
        while (_scan < _buffer.Length)
        {
            var ch = _buffer[_scan];
            if (_objectStart < 0)
            {
                if (char.IsWhiteSpace(ch) || (ch == ';' && _calls > 0)) { _scan++; continue; }
                if (ch != '{') { ToContent(output); return; }
                _objectStart = _scan;
            }
            _scan++;
            if (_inString)
            {
                if (_escape) _escape = false;
                else if (ch == '\\') _escape = true;
                else if (ch == '"') _inString = false;
                continue;
            }
            if (ch == '"') _inString = true;
            else if (ch is '{' or '[') _depth++;
            else if (ch is '}' or ']')
            {
                if (--_depth > 0) continue;
                var json = _buffer.ToString(_objectStart, _scan - _objectStart);
                if (TryParseCall(json, out var name, out var arguments))
                {
                    output.Add(new ToolStreamDelta(null, _calls++, new ToolCall(_newId(), name, arguments)));
                    _buffer.Remove(0, _scan);
                    _scan = 0;
                    _objectStart = -1;
                }
                else { _scan = _objectStart; ToContent(output); return; }
            }
        }
    }

    /// <summary>The rest of the output (from the current object on) is content.</summary>
    void ToContent(List<ToolStreamDelta> output)
    {
        var rest = _buffer.ToString(_objectStart >= 0 ? _objectStart : _scan, _buffer.Length - (_objectStart >= 0 ? _objectStart : _scan));
        if (_calls == 0) rest = _buffer.ToString();            // nothing was a call: the whole output is content
        if (rest.Length > 0) output.Add(new ToolStreamDelta(rest));
        _buffer.Clear();
        _mode = Mode.Content;
    }

    bool TryParseCall(string json, out string name, out string arguments)
    {
        name = arguments = "";
        try
        {
            using var doc = JsonDocument.Parse(json);
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) return false;
            if (!root.TryGetProperty("name", out var n) || n.ValueKind != JsonValueKind.String) return false;
            if (!root.TryGetProperty("parameters", out var args) && !root.TryGetProperty("arguments", out args)) return false;
            if (args.ValueKind == JsonValueKind.String)
            {
                // arguments given as a JSON string
                using var inner = JsonDocument.Parse(args.GetString()!);
                if (inner.RootElement.ValueKind != JsonValueKind.Object) return false;
                arguments = Compact(inner.RootElement);
            }
            else if (args.ValueKind == JsonValueKind.Object) arguments = Compact(args);
            else return false;
            name = n.GetString()!;
            return knownFunctions is null || knownFunctions.Contains(name);
        }
        catch (JsonException) { return false; }
    }

    static readonly JsonWriterOptions CompactOptions = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    static string Compact(JsonElement e)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, CompactOptions)) e.WriteTo(w);
        return Encoding.UTF8.GetString(ms.ToArray());
    }
}

/// <summary>A whole generated message split into content and tool calls.</summary>
public sealed record ParsedToolCalls(string? Content, IReadOnlyList<ToolCall> Calls);

public static class ToolCallParser
{
    /// <summary>Content and tool calls of a finished output (the same rules as streaming).</summary>
    public static ParsedToolCalls Parse(string text, IReadOnlySet<string>? knownFunctions = null, Func<string>? newId = null)
    {
        var p = new ToolCallStreamParser(knownFunctions, newId);
        var deltas = p.Push(text).Concat(p.Finish()).ToList();
        var content = string.Concat(deltas.Where(d => d.Content is not null).Select(d => d.Content));
        return new ParsedToolCalls(content.Length > 0 ? content : null, deltas.Where(d => d.Call is not null).Select(d => d.Call!).ToList());
    }
}
