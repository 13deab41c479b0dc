using System.Text;

namespace SmoaServe.Text.Jinja;

/// <summary>Operators with Python semantics.</summary>
internal static class JinjaOps
{
    public static object? Binary(string op, object? a, object? b)
    {
        if (op == "~") return Py.Str(a) + Py.Str(b);
        if (a is Undefined ua) throw new ChatTemplateException($"{JinjaBuiltins.UndefinedText(ua)} used with '{op}'");
        if (b is Undefined ub) throw new ChatTemplateException($"{JinjaBuiltins.UndefinedText(ub)} used with '{op}'");
        switch (op)
        {
            case "+":
                if (a is string sa && b is string sb) return sa + sb;
                if (a is List<object?> la && b is List<object?> lb) return la.Concat(lb).ToList();
                break;
            case "*":
                if (a is string s1 && Py.IsInteger(b)) return Repeat(s1, Py.ToLong(b));
                if (Py.IsInteger(a) && b is string s2) return Repeat(s2, Py.ToLong(a));
                if (a is List<object?> l1 && Py.IsInteger(b))
                {
                    var n = Math.Max(0, Py.ToLong(b));
                    if (l1.Count * n > 1_000_000) throw new ChatTemplateException("list repetition too large");
                    return Enumerable.Repeat(l1, (int)n).SelectMany(x => x).ToList();
                }
                break;
        }
        if (!Py.IsNumber(a) || !Py.IsNumber(b))
            throw new ChatTemplateException($"unsupported operand type(s) for {op}: '{Py.TypeName(a)}' and '{Py.TypeName(b)}'");
        var isFloat = a is double || b is double;
        switch (op)
        {
            case "+": return isFloat ? (object)(Py.ToDouble(a) + Py.ToDouble(b)) : Py.ToLong(a) + Py.ToLong(b);
            case "-": return isFloat ? (object)(Py.ToDouble(a) - Py.ToDouble(b)) : Py.ToLong(a) - Py.ToLong(b);
            case "*": return isFloat ? (object)(Py.ToDouble(a) * Py.ToDouble(b)) : Py.ToLong(a) * Py.ToLong(b);
            case "/":
                if (Py.ToDouble(b) == 0) throw new ChatTemplateException("division by zero");
                return Py.ToDouble(a) / Py.ToDouble(b);
            case "//":
                if (Py.ToDouble(b) == 0) throw new ChatTemplateException("integer division or modulo by zero");
                if (isFloat) return Math.Floor(Py.ToDouble(a) / Py.ToDouble(b));
                return FloorDiv(Py.ToLong(a), Py.ToLong(b));
            case "%":
                if (Py.ToDouble(b) == 0) throw new ChatTemplateException("integer division or modulo by zero");
                if (isFloat) { var x = Py.ToDouble(a); var y = Py.ToDouble(b); return x - y * Math.Floor(x / y); }
                return Py.ToLong(a) - Py.ToLong(b) * FloorDiv(Py.ToLong(a), Py.ToLong(b));
            case "**":
                if (!isFloat && Py.ToLong(b) >= 0) { long r = 1, x = Py.ToLong(a); for (var i = 0L; i < Py.ToLong(b); i++) r *= x; return r; }
                return Math.Pow(Py.ToDouble(a), Py.ToDouble(b));
        }
        throw new ChatTemplateException($"unknown operator '{op}'");
    }

    static long FloorDiv(long a, long b) { var q = a / b; if ((a % b != 0) && ((a < 0) != (b < 0))) q--; return q; }

    static string Repeat(string s, long n)
    {
        if (n <= 0) return "";
        if (s.Length * n > 10_000_000) throw new ChatTemplateException("string repetition too large");
        return new StringBuilder().Insert(0, s, (int)n).ToString();
    }

    public static bool CompareOp(string op, object? a, object? b) => op switch
    {
        "==" => Py.Equal(a, b),
        "!=" => !Py.Equal(a, b),
        "<" => Py.Compare(a, b) < 0,
        ">" => Py.Compare(a, b) > 0,
        "<=" => Py.Compare(a, b) <= 0,
        ">=" => Py.Compare(a, b) >= 0,
        "in" => Py.Contains(b, a),
        "notin" => !Py.Contains(b, a),
        _ => throw new ChatTemplateException($"unknown comparison '{op}'"),
    };
}

/// <summary>Variable scopes: the template's top level, one per for-loop iteration, one per macro call.</summary>
internal sealed class Frame(Frame? parent)
{
    public readonly Dictionary<string, object?> Vars = new(StringComparer.Ordinal);
    public Frame? Parent => parent;

    public bool TryGet(string name, out object? value)
    {
        for (var f = this; f is not null; f = f.Parent)
            if (f.Vars.TryGetValue(name, out value)) return true;
        value = null;
        return false;
    }
}

/// <summary>Walks the parsed template and writes the output.</summary>
internal sealed class JinjaInterpreter
{
    enum Flow { Normal, Break, Continue }
    const int MaxOutputChars = 50_000_000;
    const int MaxCallDepth = 200;
    int _depth;

    public static string Render(List<Stmt> template, Dictionary<string, object?> variables)
    {
        var root = new Frame(null);
        foreach (var (k, v) in JinjaBuiltins.GlobalFunctions()) root.Vars[k] = v;
        var top = new Frame(root);
        foreach (var (k, v) in variables) top.Vars[k] = Py.FromHost(v);
        var sb = new StringBuilder();
        new JinjaInterpreter().Exec(template, top, sb);
        return sb.ToString();
    }

    Flow Exec(List<Stmt> body, Frame f, StringBuilder sb)
    {
        foreach (var s in body)
        {
            var flow = ExecOne(s, f, sb);
            if (flow != Flow.Normal) return flow;
            if (sb.Length > MaxOutputChars) throw new ChatTemplateException("chat template output too large");
        }
        return Flow.Normal;
    }

    Flow ExecOne(Stmt s, Frame f, StringBuilder sb)
    {
        try
        {
            switch (s)
            {
                case TextStmt t: sb.Append(t.Text); return Flow.Normal;
                case OutputStmt o: sb.Append(Py.Str(Eval(o.Value, f))); return Flow.Normal;
                case IfStmt i:
                    foreach (var (cond, body) in i.Branches)
                        if (Py.Truthy(Eval(cond, f))) return Exec(body, f, sb);
                    return i.Else is null ? Flow.Normal : Exec(i.Else, f, sb);
                case ForStmt loop: return For(loop, f, sb);
                case SetStmt set: Set(set, f); return Flow.Normal;
                case SetBlockStmt sbk:
                {
                    var inner = new StringBuilder();
                    Exec(sbk.Body, f, inner);
                    object? v = inner.ToString();
                    foreach (var (name, args, kwargs) in sbk.Filters) v = ApplyFilter(name, v, args, kwargs, f);
                    f.Vars[sbk.Target] = v;
                    return Flow.Normal;
                }
                case MacroStmt m: f.Vars[m.Name] = Macro(m, f); return Flow.Normal;
                case FilterBlockStmt fb:
                {
                    var inner = new StringBuilder();
                    Exec(fb.Body, f, inner);
                    sb.Append(Py.Str(ApplyFilter(fb.Filter, inner.ToString(), fb.Args, fb.Kwargs, f)));
                    return Flow.Normal;
                }
                case BodyStmt b: return Exec(b.Body, f, sb);
                case BreakStmt: return Flow.Break;
                case ContinueStmt: return Flow.Continue;
                default: throw new ChatTemplateException($"unsupported statement {s.GetType().Name}");
            }
        }
        catch (ChatTemplateException e) when (!IsRaised(e) && !e.Message.StartsWith("chat template", StringComparison.Ordinal) && s is not (IfStmt or ForStmt or BodyStmt))
        {
            throw new ChatTemplateException($"chat template line {s.Line}: {e.Message}", e);
        }
    }

    /// <summary>raise_exception's message goes out unchanged.</summary>
    static bool IsRaised(ChatTemplateException e) => e.Data.Contains("raised");

    Flow For(ForStmt loop, Frame f, StringBuilder sb)
    {
        var items = Py.Iterate(Eval(loop.Iter, f));
        if (loop.Filter is not null)
            items = items.Where(x => { var tf = new Frame(f); Bind(tf, loop.Targets, x); return Py.Truthy(Eval(loop.Filter, tf)); }).ToList();
        if (items.Count == 0) return loop.Else is null ? Flow.Normal : Exec(loop.Else, f, sb);
        var info = new LoopInfo(items);
        for (var i = 0; i < items.Count; i++)
        {
            var frame = new Frame(f);
            Bind(frame, loop.Targets, items[i]);
            info.Index0 = i;
            frame.Vars["loop"] = info;
            if (Exec(loop.Body, frame, sb) == Flow.Break) break;
        }
        return Flow.Normal;
    }

    static void Bind(Frame f, List<string> targets, object? value)
    {
        if (targets.Count == 1) { f.Vars[targets[0]] = value; return; }
        var parts = Py.Iterate(value);
        if (parts.Count != targets.Count)
            throw new ChatTemplateException($"cannot unpack {parts.Count} values into {targets.Count} names");
        for (var i = 0; i < targets.Count; i++) f.Vars[targets[i]] = parts[i];
    }

    void Set(SetStmt set, Frame f)
    {
        var value = Eval(set.Value, f);
        if (set.Attr is not null)
        {
            if (!f.TryGet(set.Targets[0], out var target) || target is not Namespace ns)
                throw new ChatTemplateException($"cannot assign attribute '{set.Attr}' on '{set.Targets[0]}', which is not a namespace()");
            ns.Values[set.Attr] = value;
            return;
        }
        Bind(f, set.Targets, value);
    }

    JFunc Macro(MacroStmt m, Frame defining) => new(m.Name, (args, kwargs) =>
    {
        if (args.Count > m.Params.Count) throw new ChatTemplateException($"macro '{m.Name}' takes {m.Params.Count} arguments, got {args.Count}");
        if (++_depth > MaxCallDepth) throw new ChatTemplateException("macro recursion too deep");
        try
        {
            var frame = new Frame(defining);
            for (var i = 0; i < m.Params.Count; i++)
            {
                var (name, dflt) = m.Params[i];
                frame.Vars[name] = i < args.Count ? args[i]
                    : kwargs.TryGetValue(name, out var kv) ? kv
                    : dflt is not null ? Eval(dflt, frame) : new Undefined($"'{name}' is undefined");
            }
            foreach (var k in kwargs.Keys)
                if (!m.Params.Any(p => p.Name == k)) throw new ChatTemplateException($"macro '{m.Name}' has no parameter '{k}'");
            var sb = new StringBuilder();
            Exec(m.Body, frame, sb);
            return sb.ToString();
        }
        finally { _depth--; }
    });

    object? ApplyFilter(string name, object? v, List<Expr> args, List<(string Name, Expr Value)> kwargs, Frame f) =>
        JinjaBuiltins.Filter(name, v, args.Select(a => Eval(a, f)).ToList(), kwargs.ToDictionary(k => k.Name, k => Eval(k.Value, f)));

    object? Eval(Expr e, Frame f)
    {
        switch (e)
        {
            case ConstExpr c: return c.Value;
            case NameExpr n: return f.TryGet(n.Name, out var v) ? v : new Undefined($"'{n.Name}' is undefined");
            case ListExpr l: return l.IsTuple ? new PyTuple(l.Items.Select(x => Eval(x, f))) : l.Items.Select(x => Eval(x, f)).ToList();
            case DictExpr d:
            {
                var dict = Py.NewDict();
                foreach (var (k, val) in d.Items)
                    dict[Eval(k, f) ?? throw new ChatTemplateException("dict keys must not be none")] = Eval(val, f);
                return dict;
            }
            case AttrExpr a: return JinjaBuiltins.GetAttr(Eval(a.Obj, f), a.Name);
            case IndexExpr ix: return JinjaBuiltins.GetItem(Eval(ix.Obj, f), Eval(ix.Index, f));
            case SliceExpr s: return Slice(Eval(s.Obj, f), OptLong(s.Start, f), OptLong(s.Stop, f), OptLong(s.Step, f));
            case CallExpr call:
            {
                var fn = Eval(call.Fn, f);
                if (fn is not JFunc func) throw new ChatTemplateException($"'{Describe(call.Fn)}' is not callable ({Py.TypeName(fn)})");
                var args = call.Args.Select(x => Eval(x, f)).ToList();
                var kwargs = call.Kwargs.ToDictionary(k => k.Name, k => Eval(k.Value, f));
                try { return func.Invoke(args, kwargs); }
                catch (ChatTemplateException ex) when (func.Name == "raise_exception") { ex.Data["raised"] = true; throw; }
                catch (Exception ex) when (ex is ArgumentException or IndexOutOfRangeException or InvalidCastException or ArgumentOutOfRangeException)
                {
                    throw new ChatTemplateException($"bad arguments to {func.Name}(): {ex.Message}", ex);
                }
            }
            case FilterExpr fe: return ApplyFilter(fe.Name, Eval(fe.Value, f), fe.Args, fe.Kwargs, f);
            case TestExpr t:
            {
                var r = JinjaBuiltins.Test(t.Name, Eval(t.Value, f), t.Args.Select(a => Eval(a, f)).ToList());
                return t.Negated ? !r : r;
            }
            case UnaryExpr u:
            {
                var v2 = Eval(u.Operand, f);
                return u.Op switch
                {
                    "not" => !Py.Truthy(v2),
                    "-" => v2 is double d ? (object)(-d) : Py.IsInteger(v2) ? -Py.ToLong(v2) : throw new ChatTemplateException($"bad operand type for unary -: '{Py.TypeName(v2)}'"),
                    _ => Py.IsNumber(v2) ? v2 : throw new ChatTemplateException($"bad operand type for unary +: '{Py.TypeName(v2)}'"),
                };
            }
            case BinaryExpr b when b.Op == "and": { var l = Eval(b.Left, f); return Py.Truthy(l) ? Eval(b.Right, f) : l; }
            case BinaryExpr b when b.Op == "or": { var l = Eval(b.Left, f); return Py.Truthy(l) ? l : Eval(b.Right, f); }
            case BinaryExpr b: return JinjaOps.Binary(b.Op, Eval(b.Left, f), Eval(b.Right, f));
            case CompareExpr c:
            {
                var left = Eval(c.First, f);
                foreach (var (op, rightExpr) in c.Rest)
                {
                    var right = Eval(rightExpr, f);
                    if (!JinjaOps.CompareOp(op, left, right)) return false;
                    left = right;
                }
                return true;
            }
            case CondExpr ce:
                return Py.Truthy(Eval(ce.Test, f)) ? Eval(ce.Then, f)
                    : ce.Else is null ? new Undefined("the inline if expression evaluated to false and no else section was defined") : Eval(ce.Else, f);
            default: throw new ChatTemplateException($"unsupported expression {e.GetType().Name}");
        }
    }

    long? OptLong(Expr? e, Frame f)
    {
        if (e is null) return null;
        var v = Eval(e, f);
        return v is null ? null : Py.IsInteger(v) ? Py.ToLong(v) : throw new ChatTemplateException("slice indices must be integers or none");
    }

    static object? Slice(object? v, long? start, long? stop, long? step)
    {
        switch (v)
        {
            case List<object?> l: return Py.SliceIndices(l.Count, start, stop, step).Select(i => l[i]).ToList();
            case string s:
            {
                var chars = Py.TextElements(s);
                return string.Concat(Py.SliceIndices(chars.Count, start, stop, step).Select(i => (string)chars[i]!));
            }
            case Undefined u: throw new ChatTemplateException($"{JinjaBuiltins.UndefinedText(u)} cannot be sliced");
            default: throw new ChatTemplateException($"'{Py.TypeName(v)}' object is not subscriptable");
        }
    }

    static string Describe(Expr e) => e switch
    {
        NameExpr n => n.Name,
        AttrExpr a => Describe(a.Obj) + "." + a.Name,
        _ => "expression",
    };
}
