namespace SmoaServe.Text.Structured;

/// <summary>Two edges of one state claim the same byte: the grammar would not be deterministic.</summary>
internal sealed class GrammarConflictException(byte b) : Exception($"two alternatives can continue with {Describe(b)}")
{
    public byte Byte { get; } = b;

    public static string Describe(byte b) => b >= 0x21 && b < 0x7F ? $"'{(char)b}'" : $"byte 0x{b:X2}";
}

/// <summary>
/// Builds a <see cref="ByteAutomaton"/>. A rule is a start state whose edges are plain (non-call) edges on the
/// rule's first byte; <see cref="Call"/> copies those edges into the calling state as call edges, so one byte
/// pushes at most one frame.
/// </summary>
internal sealed class AutomatonBuilder(int maxStates)
{
    internal readonly record struct Edge(byte Lo, byte Hi, Transition T);

    static readonly byte[] Whitespace = [(byte)' ', (byte)'\n', (byte)'\t', (byte)'\r'];

    readonly List<List<Edge>> _edges = [];
    readonly List<bool> _final = [];
    readonly HashSet<int> _utf8Loops = [];

    public int StateCount => _edges.Count;

    public int NewState(bool final = false)
    {
        if (_edges.Count >= maxStates)
            throw new UnsupportedSchemaException("size", "", $"the schema needs more than {maxStates} automaton states");
        _edges.Add([]);
        _final.Add(final);
        return _edges.Count - 1;
    }

    public void SetFinal(int state) => _final[state] = true;

    /// <summary>Marks a string body state: every valid UTF-8 character returns to it (see ByteAutomaton.Utf8Loop).</summary>
    public void MarkUtf8Loop(int state) => _utf8Loops.Add(state);

    public IReadOnlyList<Edge> EdgesOf(int state) => _edges[state];

    public void Add(int state, byte lo, byte hi, Transition t)
    {
        foreach (var e in _edges[state])
            if (lo <= e.Hi && e.Lo <= hi)
            {
                if (e.Lo == lo && e.Hi == hi && e.T == t) return;        // the same edge twice
                throw new GrammarConflictException(Math.Max(lo, e.Lo));
            }
        _edges[state].Add(new Edge(lo, hi, t));
    }

    public void Add(int state, char c, Transition t) => Add(state, (byte)c, (byte)c, t);

    public void Add(int state, char lo, char hi, Transition t) => Add(state, (byte)lo, (byte)hi, t);

    public void AddAll(int[] states, byte lo, byte hi, Transition t) { foreach (var s in states) Add(s, lo, hi, t); }

    public void AddAll(int[] states, char c, Transition t) => AddAll(states, (byte)c, (byte)c, t);

    /// <summary>
    /// From <paramref name="from"/>, any first byte of the rule at <paramref name="calleeStart"/> enters it and
    /// returns to <paramref name="returnState"/>; the guard and op apply to the caller's count.
    /// </summary>
    public void Call(int from, int calleeStart, int returnState, CountOp op = CountOp.Keep, int guardLo = 0, int guardHi = int.MaxValue)
    {
        foreach (var e in _edges[calleeStart].ToArray())
        {
            var t = e.T;
            if (t.Return >= 0) throw new InvalidOperationException("a rule's first byte must not call another rule");
            if (0 < t.GuardLo || 0 > t.GuardHi) continue;                       // not possible from a fresh frame
            Add(from, e.Lo, e.Hi, new Transition(t.Target, returnState, guardLo, guardHi, op, 0, t.Apply(0), t.Nesting));
        }
    }

    public void CallAll(int[] from, int calleeStart, int returnState, CountOp op = CountOp.Keep, int guardLo = 0, int guardHi = int.MaxValue)
    {
        foreach (var s in from) Call(s, calleeStart, returnState, op, guardLo, guardHi);
    }

    /// <summary>A rule that starts like any of <paramref name="starts"/> (their first bytes must differ).</summary>
    public int Union(IEnumerable<int> starts)
    {
        var u = NewState();
        foreach (var s in starts)
            foreach (var e in _edges[s].ToArray()) Add(u, e.Lo, e.Hi, e.T);
        return u;
    }

    /// <summary>
    /// Copies of one logical state that allow up to <paramref name="maxWhitespace"/> whitespace bytes before what
    /// follows: chain[i] moves to chain[i+1] on whitespace. Edges added to every copy (AddAll/CallAll) follow it.
    /// </summary>
    public int[] WhitespaceChain(int maxWhitespace, bool final = false)
    {
        var chain = new int[maxWhitespace + 1];
        for (var i = 0; i < chain.Length; i++) chain[i] = NewState(final);
        for (var i = 0; i < maxWhitespace; i++)
            foreach (var w in Whitespace) Add(chain[i], w, w, Transition.Goto(chain[i + 1]));
        return chain;
    }

    /// <summary>States spelling <paramref name="bytes"/> from <paramref name="from"/>; returns the state after the last byte.</summary>
    public int Spell(int from, ReadOnlySpan<byte> bytes, bool firstNests = false)
    {
        var s = from;
        for (var i = 0; i < bytes.Length; i++)
        {
            var next = NewState();
            Add(s, bytes[i], bytes[i], Transition.Goto(next) with { Nesting = firstNests && i == 0 });
            s = next;
        }
        return s;
    }

    public ByteAutomaton Build(int start, int maxDepth, bool depthBinds, int maxTableCells)
    {
        int n = _edges.Count;
        // byte classes: the intervals between all edge boundaries
        var boundary = new bool[257];
        boundary[0] = true;
        foreach (var list in _edges) foreach (var e in list) { boundary[e.Lo] = true; boundary[e.Hi + 1] = true; }
        var classOf = new byte[256];
        int classes = 0;
        for (var b = 0; b < 256; b++)
        {
            if (boundary[b] && b > 0) classes++;
            classOf[b] = (byte)classes;
        }
        classes++;
        if ((long)n * classes > maxTableCells)
            throw new UnsupportedSchemaException("size", "", $"the schema's automaton is too large ({n} states × {classes} byte classes)");

        var transitions = new List<Transition>();
        var index = new Dictionary<Transition, int>();
        var table = new int[n * classes];
        Array.Fill(table, -1);
        for (var s = 0; s < n; s++)
            foreach (var e in _edges[s])
            {
                if (!index.TryGetValue(e.T, out var ti)) { ti = transitions.Count; transitions.Add(e.T); index[e.T] = ti; }
                for (int c = classOf[e.Lo]; c <= classOf[e.Hi]; c++) table[s * classes + c] = ti;
            }

        var (floor, ceiling) = FrameGuards();
        var (loopCategories, loopEdge) = Loops(table, transitions, classOf, classes);
        return new ByteAutomaton
        {
            Start = start, StateCount = n, ClassCount = classes, ClassOf = classOf, Table = table,
            Transitions = transitions.ToArray(), Final = _final.ToArray(),
            CountFloor = floor, CountCeiling = ceiling, LoopCategories = loopCategories, LoopEdge = loopEdge,
            Utf8Loop = Enumerable.Range(0, n).Select(s => _utf8Loops.Contains(s) && loopCategories[s] != 0).ToArray(),
            MaxDepth = maxDepth, DepthBinds = depthBinds,
        };
    }

    /// <summary>
    /// For each state, the byte categories all of whose bytes take one and the same self-loop edge (a plain edge
    /// back to the state that keeps or increments the count).
    /// </summary>
    static (ulong[] Categories, Transition[] Edge) Loops(int[] table, List<Transition> transitions, byte[] classOf, int classes)
    {
        int n = table.Length / classes;
        var categories = new ulong[n];
        var edge = new Transition[n];
        var classesOfCategory = new List<int>[ByteCategories.Count];
        for (var k = 0; k < ByteCategories.Count; k++) classesOfCategory[k] = [];
        for (var b = 0; b < 256; b++)
        {
            var list = classesOfCategory[ByteCategories.Of((byte)b)];
            if (!list.Contains(classOf[b])) list.Add(classOf[b]);
        }
        for (var s = 0; s < n; s++)
        {
            int loop = -1;
            for (var k = 0; k < ByteCategories.Count; k++)
            {
                var ok = true;
                foreach (var c in classesOfCategory[k])
                {
                    var ti = table[s * classes + c];
                    if (ti < 0) { ok = false; break; }
                    var t = transitions[ti];
                    if (t.Return >= 0 || t.Target != s || t.Op == CountOp.Set || (loop >= 0 && ti != loop)) { ok = false; break; }
                    loop = ti;
                }
                if (ok) categories[s] |= 1UL << k;
            }
            if (categories[s] != 0) edge[s] = transitions[loop];
        }
        return (categories, edge);
    }

    /// <summary>
    /// States that share a frame (joined by plain edges and by a call's return) form a region; each region's largest
    /// lower guard and smallest upper guard bound how its count can matter.
    /// </summary>
    (int[] Floor, int[] Ceiling) FrameGuards()
    {
        int n = _edges.Count;
        var parent = Enumerable.Range(0, n).ToArray();
        int Find(int x) { while (parent[x] != x) x = parent[x] = parent[parent[x]]; return x; }
        for (var s = 0; s < n; s++)
            foreach (var e in _edges[s]) parent[Find(s)] = Find(e.T.Return >= 0 ? e.T.Return : e.T.Target);
        var floorByRoot = new int[n];
        var ceilingByRoot = new int[n];
        Array.Fill(ceilingByRoot, int.MaxValue);
        for (var s = 0; s < n; s++)
            foreach (var e in _edges[s])
            {
                var r = Find(s);
                floorByRoot[r] = Math.Max(floorByRoot[r], e.T.GuardLo);
                ceilingByRoot[r] = Math.Min(ceilingByRoot[r], e.T.GuardHi);
            }
        var floor = new int[n];
        var ceiling = new int[n];
        for (var s = 0; s < n; s++) { floor[s] = floorByRoot[Find(s)]; ceiling[s] = ceilingByRoot[Find(s)]; }
        return (floor, ceiling);
    }
}
