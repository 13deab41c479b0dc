using System.Globalization;
using System.Text;

namespace SmoaServe.Text.Jinja;

internal enum Tk { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, Eof }

internal readonly record struct Token(Tk Kind, string Value, int Line)
{
    public override string ToString() => Kind switch
    {
        Tk.Eof => "end of template", Tk.VarEnd => "'}}'", Tk.BlockEnd => "'%}'", Tk.Text => "template text",
        _ => $"'{Value}'",
    };
}

/// <summary>
/// Jinja lexer with the environment HF transformers uses: trim_blocks=True, lstrip_blocks=True, "-" / "+" whitespace
/// control, comments dropped, keep_trailing_newline=False (one trailing newline of the source is removed).
/// </summary>
internal sealed class JinjaLexer
{
    readonly string _src;
    readonly List<Token> _tokens = new();
    int _pos, _line = 1;

    JinjaLexer(string src)
    {
        src = src.Replace("\r\n", "\n").Replace('\r', '\n');      // Jinja normalizes newlines to "\n"
        if (src.EndsWith('\n')) src = src[..^1];
        _src = src;
    }

    public static List<Token> Tokenize(string src)
    {
        var lx = new JinjaLexer(src);
        lx.Run();
        return lx._tokens;
    }

    void Run()
    {
        var lstripNextText = false;     // set by "-%}" / "-}}" / "-#}"
        while (_pos < _src.Length)
        {
            var tagAt = FindTagStart(_pos);
            var textEnd = tagAt < 0 ? _src.Length : tagAt;
            var text = _src[_pos..textEnd];
            var textStart = _pos;
            if (lstripNextText) text = text.TrimStart();
            lstripNextText = false;
            if (tagAt < 0) { EmitText(text); _pos = _src.Length; break; }

            var kind = _src[tagAt + 1];                    // '{', '%' or '#'
            var sign = tagAt + 2 < _src.Length ? _src[tagAt + 2] : '\0';
            if (sign == '-') text = text.TrimEnd();
            else if (sign != '+' && kind != '{') text = LStripBlock(text, textStart);
            EmitText(text);
            _line += Count(_src, textStart, tagAt, '\n');
            _pos = tagAt + 2 + (sign is '-' or '+' ? 1 : 0);

            if (kind == '#') lstripNextText = Comment();
            else if (kind == '{') lstripNextText = Tag(Tk.VarBegin, Tk.VarEnd, "}}");
            else lstripNextText = Tag(Tk.BlockBegin, Tk.BlockEnd, "%}");
        }
        _tokens.Add(new Token(Tk.Eof, "", _line));
    }

    int FindTagStart(int from)
    {
        for (var i = from; i + 1 < _src.Length; i++)
            if (_src[i] == '{' && _src[i + 1] is '{' or '%' or '#') return i;
        return -1;
    }

    /// <summary>lstrip_blocks: drops spaces/tabs between the line start and a block or comment tag.</summary>
    string LStripBlock(string text, int textStart)
    {
        var lineStart = text.LastIndexOf('\n') + 1;
        var atLineStart = lineStart > 0 || textStart == 0 || _src[textStart - 1] == '\n';
        if (!atLineStart) return text;
        for (var i = lineStart; i < text.Length; i++) if (text[i] is not (' ' or '\t')) return text;
        return text[..lineStart];
    }

    /// <summary>Consumes a comment; returns true when it ends with "-#}".</summary>
    bool Comment()
    {
        var end = _src.IndexOf("#}", _pos, StringComparison.Ordinal);
        if (end < 0) throw Error("unclosed comment");
        var strip = end > _pos && _src[end - 1] == '-';
        var plus = end > _pos && _src[end - 1] == '+';
        _line += Count(_src, _pos, end, '\n');
        _pos = end + 2;
        if (!strip && !plus) TrimBlockNewline();
        return strip;
    }

    /// <summary>Lexes the inside of {{ }} or {% %}; returns true when the tag ends with "-".</summary>
    bool Tag(Tk begin, Tk end, string close)
    {
        _tokens.Add(new Token(begin, "", _line));
        var depth = 0;
        while (true)
        {
            SkipSpaces();
            if (_pos >= _src.Length) throw Error($"unclosed tag, expected '{close}'");
            if (depth == 0)
            {
                var sign = _src[_pos] is '-' or '+' ? _src[_pos] : '\0';
                var at = sign == '\0' ? _pos : _pos + 1;
                if (string.CompareOrdinal(_src, at, close, 0, 2) == 0 && (sign != '+' || end == Tk.BlockEnd))
                {
                    _pos = at + 2;
                    _tokens.Add(new Token(end, "", _line));
                    if (end == Tk.BlockEnd && sign == '\0') TrimBlockNewline();
                    return sign == '-';
                }
            }
            var c = _src[_pos];
            if (char.IsLetter(c) || c == '_') { Name(); continue; }
            if (char.IsDigit(c)) { Number(); continue; }
            if (c is '\'' or '"') { StringLiteral(c); continue; }
            var op = Operator();
            if (op is "(" or "[" or "{") depth++;
            else if (op is ")" or "]" or "}") { if (depth == 0) throw Error($"unexpected '{op}'"); depth--; }
        }
    }

    void TrimBlockNewline()
    {
        if (_pos < _src.Length && _src[_pos] == '\n') _pos++;
    }

    void SkipSpaces()
    {
        while (_pos < _src.Length && char.IsWhiteSpace(_src[_pos])) { if (_src[_pos] == '\n') _line++; _pos++; }
    }

    void Name()
    {
        var s = _pos;
        while (_pos < _src.Length && (char.IsLetterOrDigit(_src[_pos]) || _src[_pos] == '_')) _pos++;
        _tokens.Add(new Token(Tk.Name, _src[s.._pos], _line));
    }

    void Number()
    {
        var s = _pos;
        while (_pos < _src.Length && (char.IsDigit(_src[_pos]) || _src[_pos] == '_')) _pos++;
        var isFloat = false;
        if (_pos + 1 < _src.Length && _src[_pos] == '.' && char.IsDigit(_src[_pos + 1]))
        {
            isFloat = true; _pos++;
            while (_pos < _src.Length && (char.IsDigit(_src[_pos]) || _src[_pos] == '_')) _pos++;
        }
        if (_pos < _src.Length && _src[_pos] is 'e' or 'E')
        {
            var save = _pos; _pos++;
            if (_pos < _src.Length && _src[_pos] is '+' or '-') _pos++;
            if (_pos < _src.Length && char.IsDigit(_src[_pos])) { isFloat = true; while (_pos < _src.Length && char.IsDigit(_src[_pos])) _pos++; }
            else _pos = save;
        }
        _tokens.Add(new Token(isFloat ? Tk.Float : Tk.Int, _src[s.._pos].Replace("_", ""), _line));
    }

    /// <summary>A quoted literal with Python escape sequences decoded (as Jinja does).</summary>
    void StringLiteral(char quote)
    {
        var sb = new StringBuilder();
        var startLine = _line;
        _pos++;
        while (true)
        {
            if (_pos >= _src.Length) throw Error("unterminated string literal", startLine);
            var c = _src[_pos++];
            if (c == quote) break;
            if (c == '\n') _line++;
            if (c != '\\' || _pos >= _src.Length) { sb.Append(c); continue; }
            var e = _src[_pos++];
            switch (e)
            {
                case 'n': sb.Append('\n'); break;
                case 't': sb.Append('\t'); break;
                case 'r': sb.Append('\r'); break;
                case '\\': sb.Append('\\'); break;
                case '\'': sb.Append('\''); break;
                case '"': sb.Append('"'); break;
                case 'a': sb.Append('\a'); break;
                case 'b': sb.Append('\b'); break;
                case 'f': sb.Append('\f'); break;
                case 'v': sb.Append('\v'); break;
                case '\n': _line++; break;                                  // line continuation
                case 'x': sb.Append(HexEscape(2)); break;
                case 'u': sb.Append(HexEscape(4)); break;
                case 'U': sb.Append(HexEscape(8)); break;
                case >= '0' and <= '7':
                    var v = e - '0';
                    for (var k = 0; k < 2 && _pos < _src.Length && _src[_pos] is >= '0' and <= '7'; k++) v = v * 8 + (_src[_pos++] - '0');
                    sb.Append((char)v);
                    break;
                default: sb.Append('\\').Append(e); break;                  // unknown escapes stay as written
            }
        }
        _tokens.Add(new Token(Tk.String, sb.ToString(), startLine));
    }

    string HexEscape(int digits)
    {
        if (_pos + digits > _src.Length || !int.TryParse(_src.AsSpan(_pos, digits), NumberStyles.HexNumber, null, out var cp))
            throw Error("bad escape in string literal");
        _pos += digits;
        return char.ConvertFromUtf32(cp);
    }

    static readonly string[] Ops = ["//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "=", "|", ".", ",", ":", "(", ")", "[", "]", "{", "}"];

    string Operator()
    {
        foreach (var op in Ops)
            if (string.CompareOrdinal(_src, _pos, op, 0, op.Length) == 0)
            {
                _pos += op.Length;
                _tokens.Add(new Token(Tk.Op, op, _line));
                return op;
            }
        throw Error($"unexpected character '{_src[_pos]}'");
    }

    void EmitText(string text)
    {
        if (text.Length > 0) _tokens.Add(new Token(Tk.Text, text, _line));
    }

    static int Count(string s, int from, int to, char c)
    {
        var n = 0;
        for (var i = from; i < to && i < s.Length; i++) if (s[i] == c) n++;
        return n;
    }

    ChatTemplateException Error(string message, int? line = null) => new($"chat template line {line ?? _line}: {message}");
}
