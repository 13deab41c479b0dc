using System.Globalization;

namespace SmoaServe.Text.Jinja;

/// <summary>
/// Recursive-descent parser for the Jinja subset chat templates use, with Jinja's operator precedence
/// (condexpr &lt; or &lt; and &lt; not &lt; compare &lt; +,- &lt; ~ &lt; *,/,//,% &lt; ** &lt; unary &lt; filters/tests &lt; postfix).
/// Everything it does not support is rejected here, so a template fails at load rather than rendering a wrong prompt.
/// </summary>
internal sealed class JinjaParser
{
    readonly List<Token> _t;
    int _i;
    readonly HashSet<string> _macros;
    int _nesting;                   // bounds recursion, so a hostile template cannot overflow the stack
    const int MaxNesting = 100;

    JinjaParser(List<Token> tokens)
    {
        _t = tokens;
        _macros = new HashSet<string>(StringComparer.Ordinal);
        for (var k = 0; k + 2 < tokens.Count; k++)          // macro names are callable anywhere in the template
            if (tokens[k].Kind == Tk.BlockBegin && tokens[k + 1] is { Kind: Tk.Name, Value: "macro" } && tokens[k + 2].Kind == Tk.Name)
                _macros.Add(tokens[k + 2].Value);
    }

    public static List<Stmt> Parse(string source)
    {
        var p = new JinjaParser(JinjaLexer.Tokenize(source));
        var body = p.Statements(out var endTag);
        if (endTag is not null) throw Error($"unexpected '{{% {endTag} %}}'", p.Peek.Line);
        AstDepth.Check(body);
        return body;
    }

    T Nested<T>(Func<T> parse)
    {
        if (++_nesting > MaxNesting) throw Error("template nested too deeply", Peek.Line);
        try { return parse(); }
        finally { _nesting--; }
    }

    Token Peek => _t[_i];
    Token PeekAt(int k) => _t[Math.Min(_i + k, _t.Count - 1)];
    Token Next() => _t[_i++];
    bool IsOp(string op) => Peek.Kind == Tk.Op && Peek.Value == op;
    bool IsName(string name) => Peek.Kind == Tk.Name && Peek.Value == name;

    Token Expect(Tk kind, string? value = null)
    {
        var t = Peek;
        if (t.Kind != kind || (value is not null && t.Value != value))
            throw Error($"expected {(value is not null ? $"'{value}'" : kind.ToString())}, got {t}", t.Line);
        return Next();
    }

    bool Accept(string op) { if (IsOp(op)) { _i++; return true; } return false; }
    bool AcceptName(string n) { if (IsName(n)) { _i++; return true; } return false; }

    // ---------------- statements ----------------

    static readonly HashSet<string> EndTags = ["endif", "elif", "else", "endfor", "endset", "endmacro", "endfilter", "endgeneration"];

    /// <summary>Parses until end of template or an end-ish tag, returned in <paramref name="endTag"/> (its BlockBegin and name consumed).</summary>
    List<Stmt> Statements(out string? endTag)
    {
        var body = new List<Stmt>();
        while (true)
        {
            var t = Peek;
            switch (t.Kind)
            {
                case Tk.Eof: endTag = null; return body;
                case Tk.Text: body.Add(new TextStmt(Next().Value, t.Line)); break;
                case Tk.VarBegin:
                    Next();
                    body.Add(new OutputStmt(Expression(), t.Line));
                    Expect(Tk.VarEnd);
                    break;
                case Tk.BlockBegin:
                    Next();
                    var name = Expect(Tk.Name);
                    if (EndTags.Contains(name.Value)) { endTag = name.Value; return body; }
                    body.Add(Block(name));
                    break;
                default: throw Error($"unexpected {t}", t.Line);
            }
        }
    }

    Stmt Block(Token tag) => Nested(() => BlockUnguarded(tag));

    Stmt BlockUnguarded(Token tag) => tag.Value switch
    {
        "if" => If(tag.Line),
        "for" => For(tag.Line),
        "set" => Set(tag.Line),
        "macro" => Macro(tag.Line),
        "filter" => FilterBlock(tag.Line),
        "generation" => Generation(tag.Line),
        "break" => EndBlock(new BreakStmt(tag.Line)),
        "continue" => EndBlock(new ContinueStmt(tag.Line)),
        _ => throw Error($"unsupported tag '{{% {tag.Value} %}}'", tag.Line),
    };

    Stmt EndBlock(Stmt s) { Expect(Tk.BlockEnd); return s; }

    List<Stmt> BodyUntil(string expected, int line, params string[] alsoAllowed)
    {
        var body = Statements(out var end);
        if (end is null) throw Error($"missing '{{% {expected} %}}' for the block opened here", line);
        if (end != expected && Array.IndexOf(alsoAllowed, end) < 0) throw Error($"unexpected '{{% {end} %}}', expected '{{% {expected} %}}'", _t[_i - 1].Line);
        _i--;                       // leave the end tag's name for the caller
        return body;
    }

    Stmt If(int line)
    {
        var branches = new List<(Expr, List<Stmt>)>();
        List<Stmt>? elseBody = null;
        var cond = Expression();
        Expect(Tk.BlockEnd);
        while (true)
        {
            var body = BodyUntil("endif", line, "elif", "else");
            branches.Add((cond, body));
            var end = Next().Value;
            if (end == "elif") { cond = Expression(); Expect(Tk.BlockEnd); continue; }
            if (end == "else")
            {
                Expect(Tk.BlockEnd);
                elseBody = BodyUntil("endif", line);
                Next();
            }
            Expect(Tk.BlockEnd);
            return new IfStmt(branches, elseBody, line);
        }
    }

    Stmt For(int line)
    {
        var targets = new List<string> { Expect(Tk.Name).Value };
        while (Accept(",")) targets.Add(Expect(Tk.Name).Value);
        Expect(Tk.Name, "in");
        var iter = TupleOr(() => Or());
        Expr? filter = null;
        if (AcceptName("if")) filter = Expression();
        if (IsName("recursive")) throw Error("recursive for loops are not supported", Peek.Line);
        Expect(Tk.BlockEnd);
        var body = BodyUntil("endfor", line, "else");
        List<Stmt>? elseBody = null;
        if (Next().Value == "else")
        {
            Expect(Tk.BlockEnd);
            elseBody = BodyUntil("endfor", line);
            Next();
        }
        Expect(Tk.BlockEnd);
        return new ForStmt(targets, iter, filter, body, elseBody, line);
    }

    Stmt Set(int line)
    {
        var first = Expect(Tk.Name).Value;
        if (Accept("."))
        {
            var attr = Expect(Tk.Name).Value;
            Expect(Tk.Op, "=");
            var v = TupleOr(Expression);
            Expect(Tk.BlockEnd);
            return new SetStmt([first], attr, v, line);
        }
        var targets = new List<string> { first };
        while (Accept(",")) targets.Add(Expect(Tk.Name).Value);
        if (Accept("="))
        {
            var v = TupleOr(Expression);
            Expect(Tk.BlockEnd);
            return new SetStmt(targets, null, v, line);
        }
        if (targets.Count != 1) throw Error("block set takes one name", line);
        var filters = new List<(string, List<Expr>, List<(string, Expr)>)>();
        while (Accept("|"))
        {
            var name = FilterName();
            var (args, kwargs) = IsOp("(") ? CallArgs() : ([], []);
            filters.Add((name, args, kwargs));
        }
        Expect(Tk.BlockEnd);
        var body = BodyUntil("endset", line);
        Next(); Expect(Tk.BlockEnd);
        return new SetBlockStmt(first, filters, body, line);
    }

    Stmt Macro(int line)
    {
        var name = Expect(Tk.Name).Value;
        var ps = new List<(string, Expr?)>();
        Expect(Tk.Op, "(");
        while (!IsOp(")"))
        {
            var p = Expect(Tk.Name).Value;
            ps.Add((p, Accept("=") ? Expression() : null));
            if (!Accept(",")) break;
        }
        Expect(Tk.Op, ")");
        Expect(Tk.BlockEnd);
        var body = BodyUntil("endmacro", line);
        Next(); Expect(Tk.BlockEnd);
        return new MacroStmt(name, ps, body, line);
    }

    Stmt FilterBlock(int line)
    {
        var name = FilterName();
        var (args, kwargs) = IsOp("(") ? CallArgs() : ([], []);
        Expect(Tk.BlockEnd);
        var body = BodyUntil("endfilter", line);
        Next(); Expect(Tk.BlockEnd);
        return new FilterBlockStmt(name, args, kwargs, body, line);
    }

    Stmt Generation(int line)
    {
        Expect(Tk.BlockEnd);
        var body = BodyUntil("endgeneration", line);
        Next(); Expect(Tk.BlockEnd);
        return new BodyStmt(body, line);
    }

    // ---------------- expressions ----------------

    /// <summary>An expression, or an unparenthesized tuple "a, b" (for set / for).</summary>
    Expr TupleOr(Func<Expr> item)
    {
        var line = Peek.Line;
        var first = item();
        if (!IsOp(",")) return first;
        var items = new List<Expr> { first };
        while (Accept(",")) items.Add(item());
        return new ListExpr(items, line, IsTuple: true);
    }

    Expr Expression() => Nested(ExpressionUnguarded);

    Expr ExpressionUnguarded()
    {
        var line = Peek.Line;
        var e = Or();
        while (AcceptName("if"))
        {
            var test = Or();
            Expr? otherwise = AcceptName("else") ? Expression() : null;
            e = new CondExpr(test, e, otherwise, line);
        }
        return e;
    }

    Expr Or()
    {
        var e = And();
        while (IsName("or")) { var line = Next().Line; e = new BinaryExpr("or", e, And(), line); }
        return e;
    }

    Expr And()
    {
        var e = Not();
        while (IsName("and")) { var line = Next().Line; e = new BinaryExpr("and", e, Not(), line); }
        return e;
    }

    Expr Not()
    {
        if (IsName("not")) { var line = Next().Line; return new UnaryExpr("not", Nested(Not), line); }
        return Compare();
    }

    Expr Compare()
    {
        var line = Peek.Line;
        var first = Math1();
        var rest = new List<(string, Expr)>();
        while (true)
        {
            if (Peek.Kind == Tk.Op && Peek.Value is "==" or "!=" or "<" or ">" or "<=" or ">=") { var op = Next().Value; rest.Add((op, Math1())); }
            else if (IsName("in")) { Next(); rest.Add(("in", Math1())); }
            else if (IsName("not") && PeekAt(1) is { Kind: Tk.Name, Value: "in" }) { _i += 2; rest.Add(("notin", Math1())); }
            else break;
        }
        return rest.Count == 0 ? first : new CompareExpr(first, rest, line);
    }

    Expr Math1()
    {
        var e = Concat();
        while (Peek.Kind == Tk.Op && Peek.Value is "+" or "-") { var t = Next(); e = new BinaryExpr(t.Value, e, Concat(), t.Line); }
        return e;
    }

    Expr Concat()
    {
        var e = Math2();
        while (IsOp("~")) { var t = Next(); e = new BinaryExpr("~", e, Math2(), t.Line); }
        return e;
    }

    Expr Math2()
    {
        var e = Pow();
        while (Peek.Kind == Tk.Op && Peek.Value is "*" or "/" or "//" or "%")
        {
            var t = Next();
            if (t.Value == "%" && e is ConstExpr { Value: string }) throw Error("printf-style string formatting ('...' % x) is not supported", t.Line);
            e = new BinaryExpr(t.Value, e, Pow(), t.Line);
        }
        return e;
    }

    Expr Pow()
    {
        var e = Unary();
        while (IsOp("**")) { var t = Next(); e = new BinaryExpr("**", e, Unary(), t.Line); }
        return e;
    }

    /// <summary>Jinja parse_unary: the operand of "-" is parsed without filters, which then apply to the negation (-x|abs is abs(-x)).</summary>
    Expr Unary(bool withFilter = true)
    {
        Expr e;
        if (Peek.Kind == Tk.Op && Peek.Value is "-" or "+")
        {
            var t = Next();
            e = new UnaryExpr(t.Value, Nested(() => Unary(false)), t.Line);
        }
        else e = Postfix(Primary());
        return withFilter ? FilterTail(e) : e;
    }

    Expr Primary()
    {
        var t = Next();
        switch (t.Kind)
        {
            case Tk.String:
                var s = t.Value;
                while (Peek.Kind == Tk.String) s += Next().Value;          // adjacent literals concatenate
                return new ConstExpr(s, t.Line);
            case Tk.Int:
                return long.TryParse(t.Value, NumberStyles.None, CultureInfo.InvariantCulture, out var l)
                    ? new ConstExpr(l, t.Line) : new ConstExpr(double.Parse(t.Value, CultureInfo.InvariantCulture), t.Line);
            case Tk.Float: return new ConstExpr(double.Parse(t.Value, CultureInfo.InvariantCulture), t.Line);
            case Tk.Name:
                return t.Value switch
                {
                    "true" or "True" => new ConstExpr(true, t.Line),
                    "false" or "False" => new ConstExpr(false, t.Line),
                    "none" or "None" => new ConstExpr(null, t.Line),
                    _ => new NameExpr(t.Value, t.Line),
                };
            case Tk.Op when t.Value == "(":
            {
                if (Accept(")")) return new ListExpr([], t.Line, IsTuple: true);
                var e = Expression();
                if (IsOp(","))
                {
                    var items = new List<Expr> { e };
                    while (Accept(",") && !IsOp(")")) items.Add(Expression());
                    e = new ListExpr(items, t.Line, IsTuple: true);
                }
                Expect(Tk.Op, ")");
                return e;
            }
            case Tk.Op when t.Value == "[":
            {
                var items = new List<Expr>();
                while (!IsOp("]")) { items.Add(Expression()); if (!Accept(",")) break; }
                Expect(Tk.Op, "]");
                return new ListExpr(items, t.Line);
            }
            case Tk.Op when t.Value == "{":
            {
                var items = new List<(Expr, Expr)>();
                while (!IsOp("}"))
                {
                    var k = Expression(); Expect(Tk.Op, ":");
                    items.Add((k, Expression()));
                    if (!Accept(",")) break;
                }
                Expect(Tk.Op, "}");
                return new DictExpr(items, t.Line);
            }
            default: throw Error($"unexpected {t} in expression", t.Line);
        }
    }

    Expr Postfix(Expr e)
    {
        while (true)
        {
            var t = Peek;
            if (IsOp("."))
            {
                Next();
                var name = Peek.Kind is Tk.Name or Tk.Int ? Next().Value : throw Error($"expected attribute name after '.', got {Peek}", t.Line);
                e = char.IsDigit(name[0])
                    ? new IndexExpr(e, new ConstExpr(long.Parse(name, CultureInfo.InvariantCulture), t.Line), t.Line)
                    : new AttrExpr(e, name, t.Line);
            }
            else if (IsOp("[")) { Next(); e = Subscript(e, t.Line); }
            else if (IsOp("(")) e = Call(e, t.Line);
            else return e;
        }
    }

    Expr Subscript(Expr obj, int line)
    {
        Expr? start = null, stop = null, step = null;
        if (!IsOp(":")) start = Expression();
        if (Accept(":"))
        {
            if (!IsOp(":") && !IsOp("]")) stop = Expression();
            if (Accept(":") && !IsOp("]")) step = Expression();
            Expect(Tk.Op, "]");
            return new SliceExpr(obj, start, stop, step, line);
        }
        Expect(Tk.Op, "]");
        return new IndexExpr(obj, start!, line);
    }

    Expr Call(Expr fn, int line)
    {
        switch (fn)
        {
            case NameExpr n when !JinjaBuiltins.Globals.Contains(n.Name) && !_macros.Contains(n.Name):
                throw Error($"unsupported function '{n.Name}()'", line);
            case AttrExpr a when !JinjaBuiltins.MethodNames.Contains(a.Name):
                throw Error($"unsupported method '.{a.Name}()'", line);
        }
        var (args, kwargs) = CallArgs();
        return new CallExpr(fn, args, kwargs, line);
    }

    (List<Expr>, List<(string, Expr)>) CallArgs()
    {
        Expect(Tk.Op, "(");
        var args = new List<Expr>();
        var kwargs = new List<(string, Expr)>();
        while (!IsOp(")"))
        {
            if (Peek.Kind == Tk.Name && PeekAt(1) is { Kind: Tk.Op, Value: "=" })
            {
                var k = Next().Value; Next();
                kwargs.Add((k, Expression()));
            }
            else
            {
                if (IsOp("*") || IsOp("**")) throw Error("*args / **kwargs in calls are not supported", Peek.Line);
                if (kwargs.Count > 0) throw Error("positional argument after keyword argument", Peek.Line);
                args.Add(Expression());
            }
            if (!Accept(",")) break;
        }
        Expect(Tk.Op, ")");
        return (args, kwargs);
    }

    Expr FilterTail(Expr e)
    {
        while (true)
        {
            var line = Peek.Line;
            if (Accept("|"))
            {
                var name = FilterName();
                var (args, kwargs) = IsOp("(") ? CallArgs() : ([], []);
                e = new FilterExpr(e, name, args, kwargs, line);
            }
            else if (AcceptName("is"))
            {
                var negated = AcceptName("not");
                var name = Expect(Tk.Name).Value;
                if (!JinjaBuiltins.TestNames.Contains(name)) throw Error($"unknown test 'is {name}'", line);
                var args = new List<Expr>();
                if (IsOp("(")) { var (a, kw) = CallArgs(); if (kw.Count > 0) throw Error("keyword arguments to tests are not supported", line); args = a; }
                else if (Peek.Kind is Tk.String or Tk.Int or Tk.Float || (Peek.Kind == Tk.Op && Peek.Value is "[" or "{")
                         || (Peek.Kind == Tk.Name && Peek.Value is not ("else" or "or" or "and" or "if" or "in" or "not" or "is")))
                    args.Add(Postfix(Primary()));
                e = new TestExpr(e, name, args, negated, line);
            }
            else return e;
        }
    }

    string FilterName()
    {
        var t = Expect(Tk.Name);
        if (!JinjaBuiltins.FilterNames.Contains(t.Value)) throw Error($"unknown filter '{t.Value}'", t.Line);
        return t.Value;
    }

    static ChatTemplateException Error(string message, int line) => new($"chat template line {line}: {message}");
}
