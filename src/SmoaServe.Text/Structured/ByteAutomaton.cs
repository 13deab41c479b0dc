namespace SmoaServe.Text.Structured;

/// <summary>What a transition does to the count of the frame it leaves from (string length, array items, digits).</summary>
internal enum CountOp : byte { Keep, Increment, Set }

/// <summary>
/// One edge of the automaton. Applicable when GuardLo ≤ count ≤ GuardHi (and, for a nesting call, while the stack is
/// shallower than the grammar's depth limit). A plain edge moves to Target with the count updated by Op; a call
/// (Return ≥ 0) pushes (Return, updated count) and enters the callee at Target with count EnterCount.
/// </summary>
internal readonly record struct Transition(
    int Target, int Return, int GuardLo, int GuardHi, CountOp Op, int Operand, int EnterCount, bool Nesting)
{
    public static Transition Goto(int target, CountOp op = CountOp.Keep, int operand = 0, int guardLo = 0, int guardHi = int.MaxValue) =>
        new(target, -1, guardLo, guardHi, op, operand, 0, false);

    public int Apply(int count) => Op switch { CountOp.Keep => count, CountOp.Increment => count + 1, _ => Operand };
}

/// <summary>A persistent (immutable, shared) stack frame: the state to return to and the caller's count.</summary>
internal sealed class Frame(int state, int count, Frame? parent)
{
    public readonly int State = state;
    public readonly int Count = count;
    public readonly Frame? Parent = parent;
    public readonly int Depth = (parent?.Depth ?? 0) + 1;
}

internal enum StepResult : byte { Ok, Fail, NeedsParent }

/// <summary>
/// A deterministic pushdown automaton over bytes with one counter per frame, compiled from a grammar. A byte either
/// follows the current state's edge or, where the state may end its rule (Final) and no edge applies, returns to the
/// caller and is tried there. The root's Final states accept. Edges are stored as a dense table over byte classes.
/// </summary>
internal sealed class ByteAutomaton
{
    public required int Start { get; init; }
    public required int StateCount { get; init; }
    public required int ClassCount { get; init; }
    public required byte[] ClassOf { get; init; }          // [256]
    public required int[] Table { get; init; }             // [state * ClassCount + class] → index into Transitions or −1
    public required Transition[] Transitions { get; init; }
    public required bool[] Final { get; init; }            // [state]
    /// <summary>Per state, the largest lower guard and smallest upper guard of its frame's edges (cache-key normalisation).</summary>
    public required int[] CountFloor { get; init; }
    public required int[] CountCeiling { get; init; }
    /// <summary>
    /// Per state, the byte categories every byte of which loops back to the state with the same edge (LoopEdge):
    /// a trie subtree made only of those categories is accepted whole while the count stays within the edge's guard.
    /// </summary>
    public required ulong[] LoopCategories { get; init; }
    public required Transition[] LoopEdge { get; init; }
    /// <summary>
    /// Per state: a string body, which also takes every valid UTF-8 character (lead byte with the loop edge's guard
    /// and count op, continuation bytes back to the state), so subtrees of valid UTF-8 are accepted whole too.
    /// </summary>
    public required bool[] Utf8Loop { get; init; }
    public required int MaxDepth { get; init; }
    /// <summary>Whether the depth limit can bind (a recursive rule such as "any JSON value" exists).</summary>
    public required bool DepthBinds { get; init; }

    /// <summary>
    /// Consumes one byte. With <paramref name="localStack"/>, an empty stack stands for an unknown caller: a return
    /// past it answers NeedsParent instead of failing. <paramref name="baseDepth"/> is the depth below the stack given.
    /// </summary>
    public StepResult Step(ref int state, ref int count, ref Frame? stack, int baseDepth, byte b, bool localStack)
    {
        int cls = ClassOf[b];
        while (true)
        {
            int ti = Table[state * ClassCount + cls];
            if (ti >= 0)
            {
                ref readonly var t = ref Transitions[ti];
                if (count >= t.GuardLo && count <= t.GuardHi)
                {
                    if (t.Return < 0) { state = t.Target; count = t.Apply(count); return StepResult.Ok; }
                    if (!t.Nesting || baseDepth + (stack?.Depth ?? 0) < MaxDepth)
                    {
                        stack = new Frame(t.Return, t.Apply(count), stack);
                        state = t.Target;
                        count = t.EnterCount;
                        return StepResult.Ok;
                    }
                }
            }
            if (!Final[state]) return StepResult.Fail;
            if (stack is null) return localStack ? StepResult.NeedsParent : StepResult.Fail;
            state = stack.State;
            count = stack.Count;
            stack = stack.Parent;
        }
    }

    /// <summary>Whether <paramref name="height"/> bytes of the state's loop edge all apply from <paramref name="count"/>.</summary>
    public bool LoopHolds(int state, int count, int height)
    {
        ref readonly var e = ref LoopEdge[state];
        return e.Op == CountOp.Keep ? count >= e.GuardLo && count <= e.GuardHi
            : count >= e.GuardLo && (long)count + height - 1 <= e.GuardHi;
    }

    /// <summary>Whether the input so far is a complete sentence: Final states all the way down after returning.</summary>
    public bool IsComplete(int state, Frame? stack)
    {
        while (true)
        {
            if (!Final[state]) return false;
            if (stack is null) return true;
            state = stack.State;
            stack = stack.Parent;
        }
    }
}
