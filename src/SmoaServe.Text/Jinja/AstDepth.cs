namespace SmoaServe.Text.Jinja;

/// <summary>
/// Bounds the depth of a parsed template (iteratively, without recursion), so that rendering — which recurses
/// over the tree — cannot overflow the stack on a hostile template such as a 100 000-term "a ~ a ~ ..." chain.
/// </summary>
internal static class AstDepth
{
    public const int Max = 200;

    public static void Check(List<Stmt> template)
    {
        var stack = new Stack<(object Node, int Depth)>();
        foreach (var s in template) stack.Push((s, 1));
        while (stack.Count > 0)
        {
            var (node, depth) = stack.Pop();
            if (depth > Max)
                throw new ChatTemplateException($"chat template line {Line(node)}: expression or block nested more than {Max} levels deep");
            foreach (var child in Children(node)) if (child is not null) stack.Push((child, depth + 1));
        }
    }

    static int Line(object n) => n switch { Stmt s => s.Line, Expr e => e.Line, _ => 0 };

    static IEnumerable<object?> Children(object node) => node switch
    {
        OutputStmt o => [o.Value],
        IfStmt i => i.Branches.SelectMany(b => b.Body.Cast<object?>().Prepend(b.Cond)).Concat(i.Else ?? []),
        ForStmt f => f.Body.Cast<object?>().Concat(f.Else ?? []).Append(f.Iter).Append(f.Filter),
        SetStmt s => [s.Value],
        SetBlockStmt sb => sb.Body.Cast<object?>().Concat(sb.Filters.SelectMany(x => x.Args.Concat(x.Kwargs.Select(k => k.Item2)))),
        MacroStmt m => m.Body.Cast<object?>().Concat(m.Params.Select(p => p.Default)),
        FilterBlockStmt fb => fb.Body.Cast<object?>().Concat(fb.Args).Concat(fb.Kwargs.Select(k => k.Item2)),
        BodyStmt b => b.Body,
        ListExpr l => l.Items,
        DictExpr d => d.Items.SelectMany(kv => new object?[] { kv.Key, kv.Value }),
        AttrExpr a => [a.Obj],
        IndexExpr ix => [ix.Obj, ix.Index],
        SliceExpr sl => [sl.Obj, sl.Start, sl.Stop, sl.Step],
        CallExpr c => c.Args.Cast<object?>().Concat(c.Kwargs.Select(k => k.Value)).Prepend(c.Fn),
        FilterExpr fe => fe.Args.Cast<object?>().Concat(fe.Kwargs.Select(k => k.Value)).Prepend(fe.Value),
        TestExpr t => t.Args.Cast<object?>().Prepend(t.Value),
        UnaryExpr u => [u.Operand],
        BinaryExpr b => [b.Left, b.Right],
        CompareExpr c => c.Rest.Select(r => (object?)r.Right).Prepend(c.First),
        CondExpr ce => [ce.Test, ce.Then, ce.Else],
        _ => [],
    };
}
