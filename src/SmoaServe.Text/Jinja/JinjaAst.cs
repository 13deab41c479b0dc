namespace SmoaServe.Text.Jinja;

// ---------- statements ----------
internal abstract record Stmt(int Line);
internal sealed record TextStmt(string Text, int Line) : Stmt(Line);
internal sealed record OutputStmt(Expr Value, int Line) : Stmt(Line);
internal sealed record IfStmt(List<(Expr Cond, List<Stmt> Body)> Branches, List<Stmt>? Else, int Line) : Stmt(Line);
internal sealed record ForStmt(List<string> Targets, Expr Iter, Expr? Filter, List<Stmt> Body, List<Stmt>? Else, int Line) : Stmt(Line);
/// <summary>set name = v, set a, b = v, set ns.attr = v.</summary>
internal sealed record SetStmt(List<string> Targets, string? Attr, Expr Value, int Line) : Stmt(Line);
internal sealed record SetBlockStmt(string Target, List<(string Name, List<Expr> Args, List<(string, Expr)> Kwargs)> Filters, List<Stmt> Body, int Line) : Stmt(Line);
internal sealed record MacroStmt(string Name, List<(string Name, Expr? Default)> Params, List<Stmt> Body, int Line) : Stmt(Line);
internal sealed record FilterBlockStmt(string Filter, List<Expr> Args, List<(string, Expr)> Kwargs, List<Stmt> Body, int Line) : Stmt(Line);
internal sealed record BodyStmt(List<Stmt> Body, int Line) : Stmt(Line);      // {% generation %}: rendered as is
internal sealed record BreakStmt(int Line) : Stmt(Line);
internal sealed record ContinueStmt(int Line) : Stmt(Line);

// ---------- expressions ----------
internal abstract record Expr(int Line);
internal sealed record ConstExpr(object? Value, int Line) : Expr(Line);
internal sealed record NameExpr(string Name, int Line) : Expr(Line);
internal sealed record ListExpr(List<Expr> Items, int Line, bool IsTuple = false) : Expr(Line);
internal sealed record DictExpr(List<(Expr Key, Expr Value)> Items, int Line) : Expr(Line);
internal sealed record AttrExpr(Expr Obj, string Name, int Line) : Expr(Line);
internal sealed record IndexExpr(Expr Obj, Expr Index, int Line) : Expr(Line);
internal sealed record SliceExpr(Expr Obj, Expr? Start, Expr? Stop, Expr? Step, int Line) : Expr(Line);
internal sealed record CallExpr(Expr Fn, List<Expr> Args, List<(string Name, Expr Value)> Kwargs, int Line) : Expr(Line);
internal sealed record FilterExpr(Expr Value, string Name, List<Expr> Args, List<(string Name, Expr Value)> Kwargs, int Line) : Expr(Line);
internal sealed record TestExpr(Expr Value, string Name, List<Expr> Args, bool Negated, int Line) : Expr(Line);
internal sealed record UnaryExpr(string Op, Expr Operand, int Line) : Expr(Line);     // "-", "+", "not"
internal sealed record BinaryExpr(string Op, Expr Left, Expr Right, int Line) : Expr(Line);   // arithmetic, "~", "and", "or"
internal sealed record CompareExpr(Expr First, List<(string Op, Expr Right)> Rest, int Line) : Expr(Line);
internal sealed record CondExpr(Expr Test, Expr Then, Expr? Else, int Line) : Expr(Line);
