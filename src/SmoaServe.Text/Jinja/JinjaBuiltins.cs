using System.Globalization;
using System.Net;
using System.Text;

namespace SmoaServe.Text.Jinja;

/// <summary>Filters, tests, methods and global functions of the HF chat-template environment.</summary>
internal static class JinjaBuiltins
{
    /// <summary>Clock for strftime_now (tests replace it).</summary>
    internal static Func<DateTime> Now = () => DateTime.Now;

    public static readonly HashSet<string> Globals = ["range", "namespace", "dict", "raise_exception", "strftime_now"];

    public static readonly HashSet<string> FilterNames =
    [
        "abs", "attr", "capitalize", "center", "count", "d", "default", "dictsort", "e", "escape", "first", "float", "indent", "int",
        "items", "join", "last", "length", "list", "lower", "map", "max", "min", "reject", "rejectattr", "replace", "reverse",
        "round", "safe", "select", "selectattr", "sort", "string", "sum", "title", "tojson", "trim", "unique", "upper", "wordcount",
    ];

    public static readonly HashSet<string> TestNames =
    [
        "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "==", "even", "false", "float", "ge", "gt", "greaterthan",
        "in", "integer", "iterable", "le", "lower", "lt", "lessthan", "mapping", "ne", "none", "number", "odd", "sameas",
        "sequence", "string", "true", "undefined", "upper",
    ];

    static readonly HashSet<string> StringMethods =
    [
        "strip", "lstrip", "rstrip", "startswith", "endswith", "split", "rsplit", "splitlines", "upper", "lower", "title",
        "capitalize", "replace", "find", "rfind", "count", "join", "isdigit", "isalpha", "isalnum", "isspace", "islower", "isupper",
    ];
    static readonly HashSet<string> DictMethods = ["items", "keys", "values", "get"];
    static readonly HashSet<string> ListMethods = ["index", "count"];

    public static readonly HashSet<string> MethodNames = [.. StringMethods, .. DictMethods, .. ListMethods, "cycle"];

    // ---------------- attribute and item access (jinja2 sandbox getattr / getitem) ----------------

    public static object? GetAttr(object? obj, string name)
    {
        switch (obj)
        {
            case Undefined u: throw new ChatTemplateException($"{UndefinedText(u)} has no attribute '{name}'");
            case LoopInfo loop: return loop.Get(name);
            case Namespace ns: return ns.Values.TryGetValue(name, out var v) ? v : new Undefined($"namespace has no attribute '{name}'");
            case string s when StringMethods.Contains(name): return BoundString(s, name);
            case Dictionary<object, object?> d:
                if (DictMethods.Contains(name)) return BoundDict(d, name);
                return d.TryGetValue(name, out var dv) ? dv : new Undefined($"'dict object' has no attribute '{name}'");
            case List<object?> l when ListMethods.Contains(name): return BoundList(l, name);
        }
        return new Undefined($"'{Py.TypeName(obj)} object' has no attribute '{name}'");
    }

    public static object? GetItem(object? obj, object? key)
    {
        switch (obj)
        {
            case Undefined u: throw new ChatTemplateException($"{UndefinedText(u)} has no item {Py.Repr(key)}");
            case List<object?> l when Py.IsInteger(key):
            {
                var i = Py.ToLong(key);
                if (i < 0) i += l.Count;
                return i >= 0 && i < l.Count ? l[(int)i] : new Undefined($"list index {Py.ToLong(key)} out of range");
            }
            case string s when Py.IsInteger(key):
            {
                var chars = Py.TextElements(s);
                var i = Py.ToLong(key);
                if (i < 0) i += chars.Count;
                return i >= 0 && i < chars.Count ? chars[(int)i] : new Undefined($"string index {Py.ToLong(key)} out of range");
            }
            case Dictionary<object, object?> d when key is not null and not Undefined && d.TryGetValue(key, out var v): return v;
        }
        return key is string name ? GetAttr(obj, name) : new Undefined($"'{Py.TypeName(obj)} object' has no item {Py.Repr(key)}");
    }

    public static string UndefinedText(Undefined u) => u.Description.StartsWith('\'') ? u.Description : $"undefined value ({u.Description})";

    // ---------------- methods ----------------

    static JFunc BoundString(string s, string name) => new($"str.{name}", (a, kw) =>
    {
        string? Arg(int i) => a.Count > i && a[i] is not null ? Py.Str(a[i]) : null;
        return name switch
        {
            "strip" => Strip(s, Arg(0), true, true),
            "lstrip" => Strip(s, Arg(0), true, false),
            "rstrip" => Strip(s, Arg(0), false, true),
            "startswith" => Prefixes(a).Any(p => s.StartsWith(p, StringComparison.Ordinal)),
            "endswith" => Prefixes(a).Any(p => s.EndsWith(p, StringComparison.Ordinal)),
            "split" => Split(s, Arg(0), a.Count > 1 ? (int)Py.ToLong(a[1]) : kw.TryGetValue("maxsplit", out var m) ? (int)Py.ToLong(m) : -1),
            "rsplit" when a.Count <= 1 && !kw.ContainsKey("maxsplit") => Split(s, Arg(0), -1),
            "splitlines" => s.Split('\n').Select(x => (object?)x.TrimEnd('\r')).Take(s.EndsWith('\n') ? s.Split('\n').Length - 1 : int.MaxValue).ToList(),
            "upper" => s.ToUpperInvariant(),
            "lower" => s.ToLowerInvariant(),
            "title" => Title(s),
            "capitalize" => Capitalize(s),
            "replace" => Replace(s, Py.Str(a[0]), Py.Str(a[1]), a.Count > 2 ? (int)Py.ToLong(a[2]) : -1),
            "find" => (long)s.IndexOf(Py.Str(a[0]), StringComparison.Ordinal),
            "rfind" => (long)s.LastIndexOf(Py.Str(a[0]), StringComparison.Ordinal),
            "count" => (long)CountOccurrences(s, Py.Str(a[0])),
            "join" => string.Join(s, Py.Iterate(a[0]).Select(Py.Str)),
            "isdigit" => s.Length > 0 && s.All(char.IsDigit),
            "isalpha" => s.Length > 0 && s.All(char.IsLetter),
            "isalnum" => s.Length > 0 && s.All(char.IsLetterOrDigit),
            "isspace" => s.Length > 0 && s.All(char.IsWhiteSpace),
            "islower" => s.Any(char.IsLetter) && !s.Any(char.IsUpper),
            "isupper" => s.Any(char.IsLetter) && !s.Any(char.IsLower),
            _ => throw new ChatTemplateException($"str.{name}() with these arguments is not supported"),
        };
    });

    static IEnumerable<string> Prefixes(List<object?> a) =>
        a.Count == 0 ? throw new ChatTemplateException("startswith/endswith need an argument")
        : a[0] is List<object?> l ? l.Select(Py.Str) : [Py.Str(a[0])];

    static JFunc BoundDict(Dictionary<object, object?> d, string name) => new($"dict.{name}", (a, _) => name switch
    {
        "items" => d.Select(kv => (object?)new PyTuple([kv.Key, kv.Value])).ToList(),
        "keys" => d.Keys.Cast<object?>().ToList(),
        "values" => d.Values.ToList(),
        "get" => a.Count > 0 && a[0] is not null and not Undefined && d.TryGetValue(a[0]!, out var v) ? v : a.Count > 1 ? a[1] : null,
        _ => throw new ChatTemplateException($"dict.{name}() is not supported"),
    });

    static JFunc BoundList(List<object?> l, string name) => new($"list.{name}", (a, _) => name switch
    {
        "index" => (long)l.FindIndex(x => Py.Equal(x, a[0])) is var i && i >= 0 ? i : throw new ChatTemplateException($"{Py.Repr(a[0])} is not in list"),
        "count" => (long)l.Count(x => Py.Equal(x, a[0])),
        _ => throw new ChatTemplateException($"list.{name}() is not supported"),
    });

    static string Strip(string s, string? chars, bool left, bool right)
    {
        if (chars is null) return left && right ? s.Trim() : left ? s.TrimStart() : s.TrimEnd();
        var set = chars.ToCharArray();
        return left && right ? s.Trim(set) : left ? s.TrimStart(set) : s.TrimEnd(set);
    }

    static List<object?> Split(string s, string? sep, int maxsplit)
    {
        if (sep is null)
        {
            var parts = s.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            if (maxsplit < 0 || parts.Length <= maxsplit + 1) return parts.Cast<object?>().ToList();
            var res = new List<object?>();
            var rest = s.TrimStart();
            for (var k = 0; k < maxsplit; k++)
            {
                var i = 0;
                while (i < rest.Length && !char.IsWhiteSpace(rest[i])) i++;
                res.Add(rest[..i]);
                rest = rest[i..].TrimStart();
            }
            res.Add(rest);
            return res;
        }
        if (sep.Length == 0) throw new ChatTemplateException("empty separator");
        return (maxsplit < 0 ? s.Split(sep) : s.Split(sep, maxsplit + 1)).Cast<object?>().ToList();
    }

    static string Replace(string s, string old, string @new, int count)
    {
        if (count < 0) return old.Length == 0 ? InsertBetween(s, @new) : s.Replace(old, @new, StringComparison.Ordinal);
        var sb = new StringBuilder();
        var pos = 0;
        for (var n = 0; n < count; n++)
        {
            var i = s.IndexOf(old, pos, StringComparison.Ordinal);
            if (i < 0 || old.Length == 0) break;
            sb.Append(s, pos, i - pos).Append(@new);
            pos = i + old.Length;
        }
        return sb.Append(s, pos, s.Length - pos).ToString();
    }

    static string InsertBetween(string s, string sep) => sep + string.Join(sep, Py.TextElements(s).Select(Py.Str)) + sep;

    static int CountOccurrences(string s, string sub)
    {
        if (sub.Length == 0) return s.Length + 1;
        int n = 0, pos = 0;
        while ((pos = s.IndexOf(sub, pos, StringComparison.Ordinal)) >= 0) { n++; pos += sub.Length; }
        return n;
    }

    static string Capitalize(string s) => s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant();

    static string Title(string s)
    {
        var sb = new StringBuilder(s.Length);
        var prevLetter = false;
        foreach (var c in s)
        {
            sb.Append(prevLetter ? char.ToLowerInvariant(c) : char.ToUpperInvariant(c));
            prevLetter = char.IsLetter(c);
        }
        return sb.ToString();
    }

    // ---------------- global functions ----------------

    public static Dictionary<string, object?> GlobalFunctions() => new(StringComparer.Ordinal)
    {
        ["range"] = new JFunc("range", (a, _) =>
        {
            long start = 0, stop, step = 1;
            if (a.Count == 1) stop = Py.ToLong(a[0]);
            else if (a.Count is 2 or 3) { start = Py.ToLong(a[0]); stop = Py.ToLong(a[1]); if (a.Count == 3) step = Py.ToLong(a[2]); }
            else throw new ChatTemplateException("range() takes 1 to 3 arguments");
            if (step == 0) throw new ChatTemplateException("range() step must not be zero");
            var r = new List<object?>();
            for (var i = start; step > 0 ? i < stop : i > stop; i += step) { r.Add(i); if (r.Count > 1_000_000) throw new ChatTemplateException("range() too large"); }
            return r;
        }),
        ["namespace"] = new JFunc("namespace", (a, kw) =>
        {
            var ns = new Namespace();
            foreach (var x in a)
                if (x is Dictionary<object, object?> d) foreach (var (k, v) in d) ns.Values[Py.Str(k)] = v;
                else throw new ChatTemplateException("namespace() takes keyword arguments or a dict");
            foreach (var (k, v) in kw) ns.Values[k] = v;
            return ns;
        }),
        ["dict"] = new JFunc("dict", (a, kw) =>
        {
            var d = Py.NewDict();
            foreach (var x in a) if (x is Dictionary<object, object?> src) foreach (var (k, v) in src) d[k] = v;
            foreach (var (k, v) in kw) d[k] = v;
            return d;
        }),
        ["raise_exception"] = new JFunc("raise_exception", (a, _) =>
            throw new ChatTemplateException(a.Count > 0 ? Py.Str(a[0]) : "raise_exception() called by the chat template")),
        ["strftime_now"] = new JFunc("strftime_now", (a, _) =>
            Strftime(Now(), a.Count > 0 ? Py.Str(a[0]) : throw new ChatTemplateException("strftime_now() needs a format"))),
    };

    /// <summary>Python's datetime.strftime for the common directives (C locale), including glibc's "%-d" no-padding flag.</summary>
    public static string Strftime(DateTime t, string fmt)
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        for (var i = 0; i < fmt.Length; i++)
        {
            if (fmt[i] != '%' || i + 1 >= fmt.Length) { sb.Append(fmt[i]); continue; }
            var c = fmt[++i];
            var noPad = false;
            if (c == '-' && i + 1 < fmt.Length) { noPad = true; c = fmt[++i]; }
            string Num(int v, int width) => noPad ? v.ToString(inv) : v.ToString(new string('0', width), inv);
            sb.Append(c switch
            {
                'd' => Num(t.Day, 2), 'm' => Num(t.Month, 2), 'Y' => t.Year.ToString(inv), 'y' => Num(t.Year % 100, 2),
                'H' => Num(t.Hour, 2), 'I' => Num(t.Hour % 12 == 0 ? 12 : t.Hour % 12, 2), 'M' => Num(t.Minute, 2), 'S' => Num(t.Second, 2),
                'p' => t.Hour < 12 ? "AM" : "PM", 'b' => t.ToString("MMM", inv), 'B' => t.ToString("MMMM", inv),
                'a' => t.ToString("ddd", inv), 'A' => t.ToString("dddd", inv), 'j' => Num(t.DayOfYear, 3),
                'e' => t.Day.ToString(inv).PadLeft(2), 'f' => (t.Ticks % TimeSpan.TicksPerSecond / 10).ToString("000000", inv),
                'w' => ((int)t.DayOfWeek).ToString(inv), 'F' => t.ToString("yyyy-MM-dd", inv), 'T' => t.ToString("HH:mm:ss", inv),
                'Z' => "", 'z' => "", '%' => "%",
                _ => throw new ChatTemplateException($"strftime directive '%{c}' is not supported"),
            });
        }
        return sb.ToString();
    }

    // ---------------- tests ----------------

    public static bool Test(string name, object? v, List<object?> a) => name switch
    {
        "defined" => v is not Undefined,
        "undefined" => v is Undefined,
        "none" => v is null,
        "boolean" => v is bool,
        "true" => v is true,
        "false" => v is false,
        "string" => v is string,
        "number" => v is long or double or bool,
        "integer" => v is long,
        "float" => v is double,
        "mapping" => v is Dictionary<object, object?>,
        "iterable" => v is string or List<object?> or Dictionary<object, object?> or Undefined,
        "sequence" => v is string or List<object?> or Dictionary<object, object?>,
        "callable" => v is JFunc,
        "lower" => v is string s && s == s.ToLowerInvariant(),
        "upper" => v is string s && s == s.ToUpperInvariant(),
        "even" => Py.ToLong(v) % 2 == 0,
        "odd" => Py.ToLong(v) % 2 != 0,
        "divisibleby" => Py.ToLong(v) % Py.ToLong(Arg(a, 0, name)) == 0,
        "eq" or "equalto" or "==" => Py.Equal(v, Arg(a, 0, name)),
        "ne" => !Py.Equal(v, Arg(a, 0, name)),
        "lt" or "lessthan" => Py.Compare(v, Arg(a, 0, name)) < 0,
        "le" => Py.Compare(v, Arg(a, 0, name)) <= 0,
        "gt" or "greaterthan" => Py.Compare(v, Arg(a, 0, name)) > 0,
        "ge" => Py.Compare(v, Arg(a, 0, name)) >= 0,
        "in" => Py.Contains(Arg(a, 0, name), v),
        "sameas" => SameAs(v, Arg(a, 0, name)),
        _ => throw new ChatTemplateException($"unknown test '{name}'"),
    };

    static bool SameAs(object? a, object? b) =>
        a is null || b is null || a is bool || b is bool ? Equals(a, b) && a?.GetType() == b?.GetType() : ReferenceEquals(a, b) || (a is long x && b is long y && x == y);

    static object? Arg(List<object?> a, int i, string name) =>
        a.Count > i ? a[i] : throw new ChatTemplateException($"'{name}' needs {i + 1} argument(s)");

    // ---------------- filters ----------------

    public static object? Filter(string name, object? v, List<object?> a, Dictionary<string, object?> kw)
    {
        object? P(int i, string key, object? dflt) => a.Count > i ? a[i] : kw.TryGetValue(key, out var x) ? x : dflt;
        switch (name)
        {
            case "trim": return P(0, "chars", null) is { } chars ? Py.Str(v).Trim(Py.Str(chars).ToCharArray()) : Py.Str(v).Trim();
            case "upper": return Py.Str(v).ToUpperInvariant();
            case "lower": return Py.Str(v).ToLowerInvariant();
            case "capitalize": return Capitalize(Py.Str(v));
            case "center":
            {
                var str = Py.Str(v);
                var width = (int)Py.ToLong(P(0, "width", 80L));
                if (width <= str.Length) return str;
                var left = (width - str.Length) / 2 + ((width - str.Length) % 2 & width % 2);   // Python str.center
                return new string(' ', left) + str + new string(' ', width - str.Length - left);
            }
            case "title": return Title(Py.Str(v));
            case "string": return v is string ? v : Py.Str(v);
            case "safe": return v;
            case "e" or "escape": return WebUtility.HtmlEncode(Py.Str(v)).Replace("&#39;", "&#39;");
            case "length" or "count": return Py.Length(v);
            case "wordcount": return (long)Py.Str(v).Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries).Length;
            case "d" or "default":
            {
                var boolean = Py.Truthy(P(1, "boolean", false));
                return v is Undefined || (boolean && !Py.Truthy(v)) ? P(0, "default_value", "") : v;
            }
            case "first": { var l = Py.Iterate(v); return l.Count > 0 ? l[0] : new Undefined("first of an empty sequence"); }
            case "last": { var l = Py.Iterate(v); return l.Count > 0 ? l[^1] : new Undefined("last of an empty sequence"); }
            case "list": return Py.Iterate(v).ToList();
            case "reverse": return v is string s ? string.Concat(Py.TextElements(s).AsEnumerable().Reverse()) : Py.Iterate(v).AsEnumerable().Reverse().ToList();
            case "join":
            {
                var sep = Py.Str(P(0, "d", ""));
                var items = Py.Iterate(v).AsEnumerable();
                if (P(1, "attribute", null) is { } attr) items = items.Select(x => GetItemPath(x, attr));
                return string.Join(sep, items.Select(Py.Str));
            }
            case "replace": return Replace(Py.Str(v), Py.Str(P(0, "old", "")), Py.Str(P(1, "new", "")), P(2, "count", null) is { } c ? (int)Py.ToLong(c) : -1);
            case "int": return ToInt(v, P(0, "default", 0L));
            case "float": return ToFloat(v, P(0, "default", 0.0));
            case "abs": return v is double absd ? (object)Math.Abs(absd) : Math.Abs(Py.ToLong(v));
            case "round":
            {
                var precision = (int)Py.ToLong(P(0, "precision", 0L));
                var method = Py.Str(P(1, "method", "common"));
                var x = Py.ToDouble(v);
                var f = Math.Pow(10, precision);
                return method switch
                {
                    "common" => precision >= 0 && precision <= 15 ? Math.Round(x, precision, MidpointRounding.ToEven) : Math.Round(x * f, MidpointRounding.ToEven) / f,
                    "floor" => Math.Floor(x * f) / f,
                    "ceil" => Math.Ceiling(x * f) / f,
                    _ => throw new ChatTemplateException("round method must be common, floor or ceil"),
                };
            }
            case "items":
                return v switch
                {
                    Undefined => new List<object?>(),
                    Dictionary<object, object?> d => d.Select(kv => (object?)new PyTuple([kv.Key, kv.Value])).ToList(),
                    _ => throw new ChatTemplateException($"items filter expects a mapping, got {Py.TypeName(v)}"),
                };
            case "dictsort":
            {
                if (v is not Dictionary<object, object?> d) throw new ChatTemplateException("dictsort expects a mapping");
                var byValue = Py.Str(P(1, "by", "key")) == "value";
                var pairs = d.Select(kv => (object?)new PyTuple([kv.Key, kv.Value])).ToList();
                return SortBy(pairs, x => ((List<object?>)x!)[byValue ? 1 : 0], Py.Truthy(P(0, "case_sensitive", false)), Py.Truthy(P(2, "reverse", false)));
            }
            case "sort":
            {
                var attr = P(2, "attribute", null);
                return SortBy(Py.Iterate(v).ToList(), x => attr is null ? x : GetItemPath(x, attr), Py.Truthy(P(1, "case_sensitive", false)), Py.Truthy(P(0, "reverse", false)));
            }
            case "unique":
            {
                var cs = Py.Truthy(P(0, "case_sensitive", false));
                var attr = P(1, "attribute", null);
                var seen = new List<object?>();
                var result = new List<object?>();
                foreach (var x in Py.Iterate(v))
                {
                    var key = SortKey(attr is null ? x : GetItemPath(x, attr), cs);
                    if (seen.Any(s => Py.Equal(s, key))) continue;
                    seen.Add(key); result.Add(x);
                }
                return result;
            }
            case "min" or "max":
            {
                var items = Py.Iterate(v);
                if (items.Count == 0) return new Undefined($"{name} of an empty sequence");
                var attr = P(1, "attribute", null);
                var sorted = SortBy(items.ToList(), x => attr is null ? x : GetItemPath(x, attr), Py.Truthy(P(0, "case_sensitive", false)), false);
                return name == "min" ? sorted[0] : sorted[^1];
            }
            case "sum":
            {
                var attr = P(0, "attribute", null);
                object? total = P(1, "start", 0L);
                foreach (var x in Py.Iterate(v)) total = JinjaOps.Binary("+", total, attr is null ? x : GetItemPath(x, attr));
                return total;
            }
            case "map":
            {
                var items = Py.Iterate(v);
                if (kw.TryGetValue("attribute", out var attr))
                    return items.Select(x => GetItemPath(x, attr) is var r && r is Undefined && kw.TryGetValue("default", out var dflt) ? dflt : GetItemPath(x, attr)).ToList();
                if (a.Count == 0) throw new ChatTemplateException("map needs a filter name or attribute=");
                var filter = Py.Str(a[0]);
                if (!FilterNames.Contains(filter)) throw new ChatTemplateException($"map: unknown filter '{filter}'");
                var rest = a.Skip(1).ToList();
                return items.Select(x => Filter(filter, x, rest, new Dictionary<string, object?>())).ToList();
            }
            case "select" or "reject":
            {
                var keep = name == "select";
                return Py.Iterate(v).Where(x => SelectTest(x, a) == keep).ToList();
            }
            case "selectattr" or "rejectattr":
            {
                if (a.Count == 0) throw new ChatTemplateException($"{name} needs an attribute name");
                var keep = name == "selectattr";
                return Py.Iterate(v).Where(x => SelectTest(GetItemPath(x, a[0]), a.Skip(1).ToList()) == keep).ToList();
            }
            case "attr": return GetAttr(v, Py.Str(P(0, "name", "")));
            case "indent":
            {
                var widthArg = P(0, "width", 4L);
                var pad = widthArg is string ws ? ws : new string(' ', (int)Py.ToLong(widthArg));
                var first = Py.Truthy(P(1, "first", false));
                var blank = Py.Truthy(P(2, "blank", false));
                var lines = Py.Str(v).Split('\n');
                for (var i = 0; i < lines.Length; i++)
                    if ((i > 0 || first) && (blank || lines[i].Trim().Length > 0)) lines[i] = pad + lines[i];
                return string.Join('\n', lines);
            }
            case "tojson":
            {
                var indent = P(0, "indent", null);
                var sortKeys = Py.Truthy(kw.TryGetValue("sort_keys", out var sk) ? sk : false);
                var ensureAscii = Py.Truthy(kw.TryGetValue("ensure_ascii", out var ea) ? ea : false);
                object? separators = kw.TryGetValue("separators", out var sp) ? sp : null;
                return PyJson.Dumps(v, indent, separators, sortKeys, ensureAscii);
            }
            default: throw new ChatTemplateException($"unknown filter '{name}'");
        }
    }

    /// <summary>select/reject: with no test the item's truthiness, else the named test with the remaining arguments.</summary>
    static bool SelectTest(object? x, List<object?> a)
    {
        if (a.Count == 0) return Py.Truthy(x);
        var test = Py.Str(a[0]);
        if (!TestNames.Contains(test)) throw new ChatTemplateException($"unknown test '{test}'");
        return Test(test, x, a.Skip(1).ToList());
    }

    /// <summary>Attribute lookups as map/sort/join use them: "a.b" dotted paths, integer parts as indices.</summary>
    static object? GetItemPath(object? x, object? attr)
    {
        if (attr is not string path) return GetItem(x, attr);
        foreach (var part in path.Split('.'))
            x = long.TryParse(part, out var idx) ? GetItem(x, idx) : GetItem(x, part);
        return x;
    }

    static object? SortKey(object? x, bool caseSensitive) => !caseSensitive && x is string s ? s.ToLowerInvariant() : x;

    static List<object?> SortBy(List<object?> items, Func<object?, object?> key, bool caseSensitive, bool reverse)
    {
        var keyed = items.Select(x => (Item: x, Key: SortKey(key(x), caseSensitive))).ToList();
        var sorted = keyed.OrderBy(p => p.Key, Comparer<object?>.Create(Py.Compare)).Select(p => p.Item).ToList();   // stable
        if (reverse) sorted.Reverse();
        return sorted;
    }

    static object? ToInt(object? v, object? dflt) => v switch
    {
        long or bool => Py.ToLong(v),
        double d => (long)Math.Truncate(d),
        string s when long.TryParse(s.Trim().Replace("_", ""), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var l) => l,
        string s when double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out var d) => (long)Math.Truncate(d),
        _ => dflt,
    };

    static object? ToFloat(object? v, object? dflt) => v switch
    {
        long or bool or double => Py.ToDouble(v),
        string s when double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out var d) => d,
        _ => dflt,
    };
}
