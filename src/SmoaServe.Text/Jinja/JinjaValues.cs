using System.Collections;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace SmoaServe.Text.Jinja;

/// <summary>Jinja's default Undefined: prints as "", is falsy, iterates as empty; attribute/item access on it fails.</summary>
internal sealed class Undefined(string description)
{
    public string Description { get; } = description;
    public override string ToString() => "";
}

/// <summary>A Python tuple: a list that prints with parentheses.</summary>
internal sealed class PyTuple(IEnumerable<object?> items) : List<object?>(items);

/// <summary>namespace(): the one mutable object, whose attributes {% set ns.x = ... %} may assign.</summary>
internal sealed class Namespace
{
    public Dictionary<string, object?> Values { get; } = new(StringComparer.Ordinal);
}

/// <summary>A callable: global function, bound method or macro.</summary>
internal sealed class JFunc(string name, Func<List<object?>, Dictionary<string, object?>, object?> invoke)
{
    public string Name { get; } = name;
    public object? Invoke(List<object?> args, Dictionary<string, object?> kwargs) => invoke(args, kwargs);
}

/// <summary>The loop variable of a for loop.</summary>
internal sealed class LoopInfo(List<object?> items)
{
    public int Index0;
    public object? Get(string name) => name switch
    {
        "index0" => (long)Index0,
        "index" => (long)Index0 + 1,
        "revindex" => (long)(items.Count - Index0),
        "revindex0" => (long)(items.Count - Index0 - 1),
        "first" => Index0 == 0,
        "last" => Index0 == items.Count - 1,
        "length" => (long)items.Count,
        "depth" => 1L,
        "depth0" => 0L,
        "previtem" => Index0 > 0 ? items[Index0 - 1] : new Undefined("there is no previous item"),
        "nextitem" => Index0 + 1 < items.Count ? items[Index0 + 1] : new Undefined("there is no next item"),
        "cycle" => new JFunc("loop.cycle", (a, _) => a.Count == 0 ? throw new ChatTemplateException("loop.cycle() needs arguments") : a[Index0 % a.Count]),
        _ => new Undefined($"'loop' has no attribute '{name}'"),
    };
}

/// <summary>Equality and hashing with Python semantics (1 == 1.0 == True), for dict keys and ==.</summary>
internal sealed class PyKeyComparer : IEqualityComparer<object>
{
    public static readonly PyKeyComparer Instance = new();
    public new bool Equals(object? a, object? b) => Py.Equal(a, b);
    public int GetHashCode(object o) => o switch
    {
        bool b => (b ? 1.0 : 0.0).GetHashCode(),
        long l => ((double)l).GetHashCode(),
        double d => d.GetHashCode(),
        string s => StringComparer.Ordinal.GetHashCode(s),
        _ => 0,
    };
}

/// <summary>Python-like value semantics for the interpreter: conversion of host values, truthiness, str/repr, equality, ordering.</summary>
internal static class Py
{
    public static Dictionary<object, object?> NewDict() => new(PyKeyComparer.Instance);

    /// <summary>Host (.NET / JSON) value → interpreter value: null, bool, long, double, string, List, Dictionary.</summary>
    public static object? FromHost(object? v) => v switch
    {
        null => null,
        string or bool or long or double or Undefined or Namespace or JFunc => v,
        int i => (long)i,
        short s => (long)s,
        byte b => (long)b,
        uint u => (long)u,
        ulong ul => (long)ul,
        float f => (double)f,
        decimal m => (double)m,
        JsonElement e => FromJson(e),
        JsonNode n => FromJson(JsonSerializer.SerializeToElement(n)),
        ChatMessage m => new Dictionary<object, object?>(PyKeyComparer.Instance) { ["role"] = m.Role, ["content"] = m.Content },
        IDictionary d => DictFrom(d),
        IEnumerable<KeyValuePair<string, object?>> kv => DictFrom(kv),
        IEnumerable e => e.Cast<object?>().Select(FromHost).ToList(),
        _ => throw new ChatTemplateException($"chat template variable of type {v.GetType().Name} is not supported"),
    };

    static Dictionary<object, object?> DictFrom(IDictionary d)
    {
        var r = NewDict();
        foreach (DictionaryEntry e in d) r[FromHost(e.Key) ?? throw new ChatTemplateException("null dictionary key")] = FromHost(e.Value);
        return r;
    }

    static Dictionary<object, object?> DictFrom(IEnumerable<KeyValuePair<string, object?>> d)
    {
        var r = NewDict();
        foreach (var (k, v) in d) r[k] = FromHost(v);
        return r;
    }

    public static object? FromJson(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Null or JsonValueKind.Undefined => null,
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        JsonValueKind.String => e.GetString(),
        JsonValueKind.Number => e.TryGetInt64(out var l) ? (object)l : e.GetDouble(),
        JsonValueKind.Array => e.EnumerateArray().Select(FromJson).ToList(),
        _ => e.EnumerateObject().Aggregate(NewDict(), (d, p) => { d[p.Name] = FromJson(p.Value); return d; }),
    };

    public static bool Truthy(object? v) => v switch
    {
        null or Undefined => false,
        bool b => b,
        long l => l != 0,
        double d => d != 0,
        string s => s.Length > 0,
        ICollection c => c.Count > 0,
        Namespace => true,
        _ => true,
    };

    public static string TypeName(object? v) => v switch
    {
        null => "NoneType", bool => "bool", long => "int", double => "float", string => "str", PyTuple => "tuple",
        List<object?> => "list", Dictionary<object, object?> => "dict", Undefined => "Undefined",
        Namespace => "Namespace", JFunc => "function", _ => v.GetType().Name,
    };

    /// <summary>Python str().</summary>
    public static string Str(object? v) => v switch
    {
        null => "None",
        string s => s,
        bool b => b ? "True" : "False",
        long l => l.ToString(CultureInfo.InvariantCulture),
        double d => FloatRepr(d),
        Undefined => "",
        JFunc f => $"<function {f.Name}>",
        Namespace n => "<Namespace " + Repr(n.Values.ToDictionary(k => (object)k.Key, k => k.Value, PyKeyComparer.Instance)) + ">",
        _ => Repr(v),
    };

    /// <summary>Python repr() (lists and dicts print their items with repr).</summary>
    public static string Repr(object? v) => v switch
    {
        string s => StrRepr(s),
        PyTuple t => "(" + string.Join(", ", t.Select(Repr)) + (t.Count == 1 ? ",)" : ")"),
        List<object?> l => "[" + string.Join(", ", l.Select(Repr)) + "]",
        Dictionary<object, object?> d => "{" + string.Join(", ", d.Select(kv => Repr(kv.Key) + ": " + Repr(kv.Value))) + "}",
        _ => Str(v),
    };

    static string StrRepr(string s)
    {
        var quote = s.Contains('\'') && !s.Contains('"') ? '"' : '\'';
        var sb = new StringBuilder().Append(quote);
        foreach (var c in s)
        {
            switch (c)
            {
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                default:
                    if (c == quote) sb.Append('\\').Append(c);
                    else if (c < 0x20 || c == 0x7F) sb.Append($"\\x{(int)c:x2}");
                    else sb.Append(c);
                    break;
            }
        }
        return sb.Append(quote).ToString();
    }

    /// <summary>Python float repr: shortest round-trip digits, ".0" for integral values, exponent form outside 1e-4 ≤ |x| &lt; 1e16.</summary>
    public static string FloatRepr(double d)
    {
        if (double.IsNaN(d)) return "nan";
        if (double.IsInfinity(d)) return d > 0 ? "inf" : "-inf";
        if (d == 0) return double.IsNegative(d) ? "-0.0" : "0.0";
        var r = Math.Abs(d).ToString("R", CultureInfo.InvariantCulture);
        var e = 0;
        var ei = r.IndexOf('E');
        if (ei >= 0) { e = int.Parse(r[(ei + 1)..], CultureInfo.InvariantCulture); r = r[..ei]; }
        var dot = r.IndexOf('.');
        var intLen = dot < 0 ? r.Length : dot;
        var digits = r.Replace(".", "");
        var lead = 0;
        while (lead < digits.Length - 1 && digits[lead] == '0') lead++;
        digits = digits[lead..].TrimEnd('0');
        if (digits.Length == 0) digits = "0";
        var x = intLen - 1 - lead + e;                      // decimal exponent of the first digit
        string body;
        if (x >= -4 && x < 16)
        {
            if (x >= 0)
            {
                var ip = digits.Length > x + 1 ? digits[..(x + 1)] : digits.PadRight(x + 1, '0');
                var fp = digits.Length > x + 1 ? digits[(x + 1)..] : "0";
                body = ip + "." + fp;
            }
            else body = "0." + new string('0', -x - 1) + digits;
        }
        else body = digits[0] + (digits.Length > 1 ? "." + digits[1..] : "") + "e" + (x < 0 ? "-" : "+") + Math.Abs(x).ToString("00", CultureInfo.InvariantCulture);
        return d < 0 ? "-" + body : body;
    }

    public static bool Equal(object? a, object? b)
    {
        if (a is Undefined || b is Undefined) return a is Undefined && b is Undefined;
        if (a is null || b is null) return a is null && b is null;
        if (IsNumber(a) && IsNumber(b)) return a is double || b is double ? ToDouble(a) == ToDouble(b) : ToLong(a) == ToLong(b);
        return (a, b) switch
        {
            (string x, string y) => string.Equals(x, y, StringComparison.Ordinal),
            (List<object?> x, List<object?> y) => x.Count == y.Count && x.Zip(y).All(p => Equal(p.First, p.Second)),
            (Dictionary<object, object?> x, Dictionary<object, object?> y) =>
                x.Count == y.Count && x.All(kv => y.TryGetValue(kv.Key, out var v) && Equal(kv.Value, v)),
            _ => ReferenceEquals(a, b),
        };
    }

    public static int Compare(object? a, object? b)
    {
        if (IsNumber(a) && IsNumber(b)) return a is double || b is double ? ToDouble(a).CompareTo(ToDouble(b)) : ToLong(a).CompareTo(ToLong(b));
        if (a is string x && b is string y) return string.CompareOrdinal(x, y) switch { < 0 => -1, > 0 => 1, _ => 0 };
        if (a is List<object?> la && b is List<object?> lb)
        {
            for (var i = 0; i < Math.Min(la.Count, lb.Count); i++) { var c = Compare(la[i], lb[i]); if (c != 0) return c; }
            return la.Count.CompareTo(lb.Count);
        }
        throw new ChatTemplateException($"cannot compare '{TypeName(a)}' with '{TypeName(b)}'");
    }

    public static bool IsNumber(object? v) => v is long or double or bool;
    public static bool IsInteger(object? v) => v is long or bool;
    public static long ToLong(object? v) => v switch { long l => l, bool b => b ? 1 : 0, double d => (long)d, _ => throw new ChatTemplateException($"expected a number, got '{TypeName(v)}'") };
    public static double ToDouble(object? v) => v switch { long l => l, bool b => b ? 1 : 0, double d => d, _ => throw new ChatTemplateException($"expected a number, got '{TypeName(v)}'") };

    /// <summary>Python iteration: list items, dict keys, string characters; undefined is empty.</summary>
    public static List<object?> Iterate(object? v) => v switch
    {
        List<object?> l => l,
        Dictionary<object, object?> d => d.Keys.Cast<object?>().ToList(),
        string s => TextElements(s),
        Undefined => [],
        Namespace n => n.Values.Keys.Cast<object?>().ToList(),
        _ => throw new ChatTemplateException($"'{TypeName(v)}' object is not iterable"),
    };

    /// <summary>A string's code points as one-character strings.</summary>
    public static List<object?> TextElements(string s)
    {
        var r = new List<object?>(s.Length);
        for (var i = 0; i < s.Length; i++)
        {
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { r.Add(s.Substring(i, 2)); i++; }
            else r.Add(s[i].ToString());
        }
        return r;
    }

    public static long Length(object? v) => v switch
    {
        string s => Encoding.UTF32.GetByteCount(s) / 4,
        ICollection c => c.Count,
        Undefined => 0,
        Namespace n => n.Values.Count,
        _ => throw new ChatTemplateException($"object of type '{TypeName(v)}' has no len()"),
    };

    public static bool Contains(object? container, object? item) => container switch
    {
        string s => item is string sub ? s.Contains(sub, StringComparison.Ordinal) : throw new ChatTemplateException($"'in <string>' requires string as left operand, not {TypeName(item)}"),
        List<object?> l => l.Any(x => Equal(x, item)),
        Dictionary<object, object?> d => item is not null && item is not Undefined && d.ContainsKey(item),
        Undefined => false,
        Namespace n => item is string k && n.Values.ContainsKey(k),
        _ => throw new ChatTemplateException($"argument of type '{TypeName(container)}' is not iterable"),
    };

    /// <summary>Python slice semantics (negative indices, negative steps) over a length.</summary>
    public static IEnumerable<int> SliceIndices(int len, long? start, long? stop, long? step)
    {
        var st = step ?? 1;
        if (st == 0) throw new ChatTemplateException("slice step cannot be zero");
        long Clamp(long? v, long dflt, long lo, long hi)
        {
            if (v is null) return dflt;
            var x = v.Value < 0 ? v.Value + len : v.Value;
            return Math.Min(Math.Max(x, lo), hi);
        }
        if (st > 0)
        {
            var a = Clamp(start, 0, 0, len); var b = Clamp(stop, len, 0, len);
            for (var i = a; i < b; i += st) yield return (int)i;
        }
        else
        {
            var a = Clamp(start, len - 1, -1, len - 1); var b = Clamp(stop, -1, -1, len - 1);
            for (var i = a; i > b; i += st) yield return (int)i;
        }
    }
}
