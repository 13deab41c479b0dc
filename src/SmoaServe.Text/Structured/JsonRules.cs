namespace SmoaServe.Text.Structured;

/// <summary>
/// The JSON building blocks as automaton rules (each returns its start state): strings (UTF-8 checked, escapes,
/// length bounds), numbers (digit bounds), literal sets (enum/const), objects with fixed properties, free-key
/// objects, arrays, and "any JSON value" (recursive, depth-limited). Whitespace between tokens is optional and
/// bounded per place.
/// </summary>
internal sealed class JsonRules(AutomatonBuilder b, JsonGrammarOptions options)
{
    readonly Dictionary<(int, int), int> _strings = new();
    readonly Dictionary<bool, int> _numbers = new();
    int _anyValue = -1;

    public AutomatonBuilder Builder => b;
    public bool UsesAnyValue => _anyValue >= 0;
    int Ws => options.MaxWhitespace;

    /// <summary>ws value ws, accepting after the value.</summary>
    public int Root(int value)
    {
        var pre = b.WhitespaceChain(Ws);
        var post = b.WhitespaceChain(Ws, final: true);
        b.CallAll(pre, value, post[0]);
        return pre[0];
    }

    /// <summary>A JSON string of minLength..maxLength characters (code points; an escape is one).</summary>
    public int String(int minLength, int? maxLength)
    {
        if (maxLength is null && options.DefaultMaxStringLength is int d && d >= minLength) maxLength = d;
        var key = (minLength, maxLength ?? -1);
        if (_strings.TryGetValue(key, out var memo)) return memo;

        int start = b.NewState(), body = b.NewState(), end = b.NewState(final: true);
        bool counting = minLength > 0 || maxLength is not null;
        int charGuard = maxLength is int max ? max - 1 : int.MaxValue;
        Transition Char(int target) => counting ? Transition.Goto(target, CountOp.Increment, guardHi: charGuard) : Transition.Goto(target);

        b.Add(start, '"', Transition.Goto(body, CountOp.Set, 0));
        b.Add(body, '"', Transition.Goto(end, guardLo: minLength));
        b.Add(body, 0x20, 0x21, Char(body));
        b.Add(body, 0x23, 0x5B, Char(body));
        b.Add(body, 0x5D, 0x7F, Char(body));

        // escapes; \u escapes exclude surrogates (D800–DFFF) so every string decodes to valid Unicode
        int esc = b.NewState(), u1 = b.NewState(), u2 = b.NewState(), u2d = b.NewState(), u3 = b.NewState(), u4 = b.NewState();
        b.Add(body, '\\', Char(esc));
        foreach (var c in "\"\\/bfnrt") b.Add(esc, c, Transition.Goto(body));
        b.Add(esc, 'u', Transition.Goto(u1));
        Hex(u1, u2, exceptD: true);
        b.Add(u1, 'd', Transition.Goto(u2d));
        b.Add(u1, 'D', Transition.Goto(u2d));
        b.Add(u2d, '0', '7', Transition.Goto(u3));
        Hex(u2, u3);
        Hex(u3, u4);
        Hex(u4, body);

        // UTF-8 (RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF); a character counts at its lead byte
        int c1 = b.NewState(), c2 = b.NewState(), c3 = b.NewState(), e0 = b.NewState(), ed = b.NewState(), f0 = b.NewState(), f4 = b.NewState();
        b.Add(c1, 0x80, 0xBF, Transition.Goto(body));
        b.Add(c2, 0x80, 0xBF, Transition.Goto(c1));
        b.Add(c3, 0x80, 0xBF, Transition.Goto(c2));
        b.Add(e0, 0xA0, 0xBF, Transition.Goto(c1));
        b.Add(ed, 0x80, 0x9F, Transition.Goto(c1));
        b.Add(f0, 0x90, 0xBF, Transition.Goto(c2));
        b.Add(f4, 0x80, 0x8F, Transition.Goto(c2));
        b.Add(body, 0xC2, 0xDF, Char(c1));
        b.Add(body, 0xE0, 0xE0, Char(e0));
        b.Add(body, 0xE1, 0xEC, Char(c2));
        b.Add(body, 0xED, 0xED, Char(ed));
        b.Add(body, 0xEE, 0xEF, Char(c2));
        b.Add(body, 0xF0, 0xF0, Char(f0));
        b.Add(body, 0xF1, 0xF3, Char(c3));
        b.Add(body, 0xF4, 0xF4, Char(f4));
        b.MarkUtf8Loop(body);
        return _strings[key] = start;
    }

    void Hex(int from, int to, bool exceptD = false)
    {
        b.Add(from, '0', '9', Transition.Goto(to));
        if (exceptD)
        {
            b.Add(from, 'a', 'c', Transition.Goto(to)); b.Add(from, 'e', 'f', Transition.Goto(to));
            b.Add(from, 'A', 'C', Transition.Goto(to)); b.Add(from, 'E', 'F', Transition.Goto(to));
        }
        else
        {
            b.Add(from, 'a', 'f', Transition.Goto(to));
            b.Add(from, 'A', 'F', Transition.Goto(to));
        }
    }

    /// <summary>-?(0|[1-9][0-9]*) and, unless <paramref name="integer"/>, (.[0-9]+)?([eE][+-]?[0-9]+)?, digits bounded.</summary>
    public int Number(bool integer)
    {
        if (_numbers.TryGetValue(integer, out var memo)) return memo;
        int start = b.NewState(), minus = b.NewState(), zero = b.NewState(final: true), intDigits = b.NewState(final: true);
        b.Add(start, '-', Transition.Goto(minus));
        foreach (var s in new[] { start, minus })
        {
            b.Add(s, '0', Transition.Goto(zero, CountOp.Set, 1));
            b.Add(s, '1', '9', Transition.Goto(intDigits, CountOp.Set, 1));
        }
        b.Add(intDigits, '0', '9', Transition.Goto(intDigits, CountOp.Increment, guardHi: options.MaxIntegerDigits - 1));
        if (!integer)
        {
            int dot = b.NewState(), frac = b.NewState(final: true), e = b.NewState(), sign = b.NewState(), exp = b.NewState(final: true);
            foreach (var s in new[] { zero, intDigits })
            {
                b.Add(s, '.', Transition.Goto(dot));
                b.Add(s, 'e', Transition.Goto(e));
                b.Add(s, 'E', Transition.Goto(e));
            }
            b.Add(dot, '0', '9', Transition.Goto(frac, CountOp.Set, 1));
            b.Add(frac, '0', '9', Transition.Goto(frac, CountOp.Increment, guardHi: options.MaxFractionDigits - 1));
            b.Add(frac, 'e', Transition.Goto(e));
            b.Add(frac, 'E', Transition.Goto(e));
            b.Add(e, '+', Transition.Goto(sign));
            b.Add(e, '-', Transition.Goto(sign));
            foreach (var s in new[] { e, sign }) b.Add(s, '0', '9', Transition.Goto(exp, CountOp.Set, 1));
            b.Add(exp, '0', '9', Transition.Goto(exp, CountOp.Increment, guardHi: options.MaxExponentDigits - 1));
        }
        return _numbers[integer] = start;
    }

    /// <summary>Exactly one of the given byte strings (a trie; a literal may be a prefix of another).</summary>
    public int Literals(IEnumerable<byte[]> literals)
    {
        int start = b.NewState();
        var children = new Dictionary<(int, byte), int>();
        foreach (var lit in literals)
        {
            if (lit.Length == 0) throw new ArgumentException("empty literal");
            var s = start;
            foreach (var x in lit)
            {
                if (!children.TryGetValue((s, x), out var next))
                {
                    next = b.NewState();
                    children[(s, x)] = next;
                    b.Add(s, x, x, Transition.Goto(next));
                }
                s = next;
            }
            b.SetFinal(s);
        }
        return start;
    }

    /// <summary>
    /// An object with the given properties in order: required ones always, optional ones may be left out.
    /// Key bytes are the property name as a JSON string body (escaped), without the quotes.
    /// </summary>
    public int Object(IReadOnlyList<(byte[] Key, int Value, bool Required)> props)
    {
        int k = props.Count;
        int start = b.NewState(), end = b.NewState(final: true);
        var open = b.WhitespaceChain(Ws);
        b.Add(start, '{', Transition.Goto(open[0]) with { Nesting = true });

        var after = new int[k + 1][];                                  // after[i]: after the member for property i-1
        var comma = new int[k][];                                      // comma[i]: after ',' with properties ≥ i left
        var colon = new int[k][];
        var value = new int[k][];
        for (var i = 1; i <= k; i++) after[i] = b.WhitespaceChain(Ws);
        for (var i = 1; i < k; i++) comma[i] = b.WhitespaceChain(Ws);
        for (var j = 0; j < k; j++) { colon[j] = b.WhitespaceChain(Ws); value[j] = b.WhitespaceChain(Ws); }

        bool NoneRequiredFrom(int i) { for (var j = i; j < k; j++) if (props[j].Required) return false; return true; }

        if (NoneRequiredFrom(0)) b.AddAll(open, '}', Transition.Goto(end));
        if (k > 0) b.AddAll(open, '"', Transition.Goto(KeyTrie(0)));
        for (var i = 1; i <= k; i++)
        {
            if (NoneRequiredFrom(i)) b.AddAll(after[i], '}', Transition.Goto(end));
            if (i < k)
            {
                b.AddAll(after[i], ',', Transition.Goto(comma[i][0]));
                b.AddAll(comma[i], '"', Transition.Goto(KeyTrie(i)));
            }
        }
        for (var j = 0; j < k; j++)
        {
            b.AddAll(colon[j], ':', Transition.Goto(value[j][0]));
            b.CallAll(value[j], props[j].Value, after[j + 1][0]);
        }
        return start;

        // after the opening quote of a key: the names of properties i, i+1, … up to the first required one
        int KeyTrie(int i)
        {
            int root = b.NewState();
            var children = new Dictionary<(int, byte), int>();
            for (var j = i; j < k; j++)
            {
                var s = root;
                foreach (var x in props[j].Key)
                {
                    if (!children.TryGetValue((s, x), out var next))
                    {
                        next = b.NewState();
                        children[(s, x)] = next;
                        b.Add(s, x, x, Transition.Goto(next));
                    }
                    s = next;
                }
                b.Add(s, '"', Transition.Goto(colon[j][0]));
                if (props[j].Required) break;
            }
            return root;
        }
    }

    /// <summary>An object with any keys (strings) whose values follow <paramref name="value"/>.</summary>
    public int FreeObject(int value)
    {
        int start = b.NewState(), end = b.NewState(final: true);
        int key = String(0, null);
        int[] open = b.WhitespaceChain(Ws), colon = b.WhitespaceChain(Ws), val = b.WhitespaceChain(Ws),
              after = b.WhitespaceChain(Ws), comma = b.WhitespaceChain(Ws);
        b.Add(start, '{', Transition.Goto(open[0]) with { Nesting = true });
        FreeObjectBody(open, colon, val, after, comma, end, key, value);
        return start;
    }

    void FreeObjectBody(int[] open, int[] colon, int[] val, int[] after, int[] comma, int end, int key, int value)
    {
        b.AddAll(open, '}', Transition.Goto(end));
        b.CallAll(open, key, colon[0]);
        b.AddAll(colon, ':', Transition.Goto(val[0]));
        b.CallAll(val, value, after[0]);
        b.AddAll(after, ',', Transition.Goto(comma[0]));
        b.AddAll(after, '}', Transition.Goto(end));
        b.CallAll(comma, key, colon[0]);
    }

    /// <summary>An array of minItems..maxItems items following <paramref name="item"/> (item −1: no items allowed).</summary>
    public int Array(int item, int minItems, int? maxItems)
    {
        int start = b.NewState(), end = b.NewState(final: true);
        int[] open = b.WhitespaceChain(Ws), after = b.WhitespaceChain(Ws), comma = b.WhitespaceChain(Ws);
        bool counting = minItems > 0 || maxItems is not null;
        int itemGuard = maxItems is int max ? max - 1 : int.MaxValue;
        var op = counting ? CountOp.Increment : CountOp.Keep;
        b.Add(start, '[', Transition.Goto(open[0], CountOp.Set, 0) with { Nesting = true });
        b.AddAll(open, ']', Transition.Goto(end, guardLo: minItems));
        b.AddAll(after, ']', Transition.Goto(end, guardLo: minItems));
        if (item >= 0 && maxItems != 0)
        {
            b.CallAll(open, item, after[0], op, guardHi: itemGuard);
            b.AddAll(after, ',', Transition.Goto(comma[0], guardHi: itemGuard));
            b.CallAll(comma, item, after[0], op, guardHi: itemGuard);
        }
        return start;
    }

    /// <summary>Any JSON value; objects and arrays nest up to the grammar's depth limit, after which only scalars fit.</summary>
    public int AnyValue()
    {
        if (_anyValue >= 0) return _anyValue;
        int v = _anyValue = b.NewState();
        int objEnd = b.NewState(final: true), arrEnd = b.NewState(final: true);
        int[] open = b.WhitespaceChain(Ws), colon = b.WhitespaceChain(Ws), val = b.WhitespaceChain(Ws),
              after = b.WhitespaceChain(Ws), comma = b.WhitespaceChain(Ws);
        int[] arrOpen = b.WhitespaceChain(Ws), arrAfter = b.WhitespaceChain(Ws), arrComma = b.WhitespaceChain(Ws);
        // first bytes first: the calls below copy them
        b.Add(v, '{', Transition.Goto(open[0]) with { Nesting = true });
        b.Add(v, '[', Transition.Goto(arrOpen[0]) with { Nesting = true });
        foreach (var scalar in new[] { String(0, null), Number(integer: false), Literals([[.. "true"u8], [.. "false"u8], [.. "null"u8]]) })
            foreach (var e in b.EdgesOf(scalar).ToArray()) b.Add(v, e.Lo, e.Hi, e.T);

        FreeObjectBody(open, colon, val, after, comma, objEnd, String(0, null), v);
        b.AddAll(arrOpen, ']', Transition.Goto(arrEnd));
        b.CallAll(arrOpen, v, arrAfter[0]);
        b.AddAll(arrAfter, ',', Transition.Goto(arrComma[0]));
        b.AddAll(arrAfter, ']', Transition.Goto(arrEnd));
        b.CallAll(arrComma, v, arrAfter[0]);
        return v;
    }
}
