using System.Text;

namespace SmoaServe.Text.Jinja;

/// <summary>Python's json.dumps as HF's tojson filter calls it (ensure_ascii=False by default, indent, separators, sort_keys).</summary>
internal static class PyJson
{
    public static string Dumps(object? v, object? indent, object? separators, bool sortKeys, bool ensureAscii)
    {
        string? indentUnit = indent switch
        {
            null or Undefined => null,
            string s => s,
            _ => new string(' ', (int)Math.Max(0, Py.ToLong(indent))),
        };
        string itemSep = indentUnit is null ? ", " : ",", keySep = ": ";
        if (separators is List<object?> { Count: 2 } sep) { itemSep = Py.Str(sep[0]); keySep = Py.Str(sep[1]); }
        var sb = new StringBuilder();
        Write(sb, v, indentUnit, 0, itemSep, keySep, sortKeys, ensureAscii);
        return sb.ToString();
    }

    static void Write(StringBuilder sb, object? v, string? indent, int level, string itemSep, string keySep, bool sortKeys, bool ascii)
    {
        switch (v)
        {
            case null: sb.Append("null"); return;
            case bool b: sb.Append(b ? "true" : "false"); return;
            case long l: sb.Append(Py.Str(l)); return;
            case double d:
                sb.Append(double.IsNaN(d) ? "NaN" : double.IsPositiveInfinity(d) ? "Infinity" : double.IsNegativeInfinity(d) ? "-Infinity" : Py.FloatRepr(d));
                return;
            case string s: WriteString(sb, s, ascii); return;
            case List<object?> list:
                if (list.Count == 0) { sb.Append("[]"); return; }
                sb.Append('[');
                for (var i = 0; i < list.Count; i++)
                {
                    if (i > 0) sb.Append(itemSep);
                    NewLine(sb, indent, level + 1);
                    Write(sb, list[i], indent, level + 1, itemSep, keySep, sortKeys, ascii);
                }
                NewLine(sb, indent, level);
                sb.Append(']');
                return;
            case Dictionary<object, object?> dict:
            {
                if (dict.Count == 0) { sb.Append("{}"); return; }
                var entries = dict.Select(kv => (Key: KeyString(kv.Key), kv.Value)).ToList();
                if (sortKeys) entries = entries.OrderBy(e => e.Key, StringComparer.Ordinal).ToList();
                sb.Append('{');
                for (var i = 0; i < entries.Count; i++)
                {
                    if (i > 0) sb.Append(itemSep);
                    NewLine(sb, indent, level + 1);
                    WriteString(sb, entries[i].Key, ascii);
                    sb.Append(keySep);
                    Write(sb, entries[i].Value, indent, level + 1, itemSep, keySep, sortKeys, ascii);
                }
                NewLine(sb, indent, level);
                sb.Append('}');
                return;
            }
            case Namespace ns:
                Write(sb, ns.Values.ToDictionary(k => (object)k.Key, k => k.Value, PyKeyComparer.Instance), indent, level, itemSep, keySep, sortKeys, ascii);
                return;
            default: throw new ChatTemplateException($"Object of type {Py.TypeName(v)} is not JSON serializable");
        }
    }

    static string KeyString(object k) => k switch
    {
        string s => s,
        bool b => b ? "true" : "false",
        long or double => Py.Str(k),
        _ => throw new ChatTemplateException($"keys must be str, int, float or bool, not {Py.TypeName(k)}"),
    };

    static void NewLine(StringBuilder sb, string? indent, int level)
    {
        if (indent is null) return;
        sb.Append('\n');
        for (var i = 0; i < level; i++) sb.Append(indent);
    }

    static void WriteString(StringBuilder sb, string s, bool ascii)
    {
        sb.Append('"');
        foreach (var c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < 0x20 || (ascii && c > 0x7F)) sb.Append($"\\u{(int)c:x4}");
                    else sb.Append(c);
                    break;
            }
        }
        sb.Append('"');
    }
}
