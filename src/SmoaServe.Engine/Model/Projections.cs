namespace SmoaServe.Engine.Model;

/// <summary>The seven Llama projections an adapter can target (Hugging Face module names in <see cref="ProjectionNames"/>).</summary>
public enum Projection { Q, K, V, O, Gate, Up, Down }

public static class ProjectionNames
{
    public static string ModuleName(Projection p) => p switch
    {
        Projection.Q => "q_proj", Projection.K => "k_proj", Projection.V => "v_proj", Projection.O => "o_proj",
        Projection.Gate => "gate_proj", Projection.Up => "up_proj", Projection.Down => "down_proj",
        _ => throw new ArgumentOutOfRangeException(nameof(p)),
    };

    /// <summary>"self_attn.q_proj" / "mlp.gate_proj": the path below "model.layers.{L}.".</summary>
    public static string ModulePath(Projection p) => p <= Projection.O ? "self_attn." + ModuleName(p) : "mlp." + ModuleName(p);

    public static bool TryParse(string moduleName, out Projection p)
    {
        foreach (var candidate in Enum.GetValues<Projection>())
            if (ModuleName(candidate) == moduleName) { p = candidate; return true; }
        p = default;
        return false;
    }
}

/// <summary>
/// The projections that one GEMM of the forward computes from one input: q/k/v, o, gate/up, down. The GEMM's output
/// holds the parts' outputs side by side, in <see cref="ProjectionGroups.Parts"/> order.
/// </summary>
public enum ProjectionGroup { Qkv, O, GateUp, Down }

public static class ProjectionGroups
{
    public static readonly ProjectionGroup[] All = [ProjectionGroup.Qkv, ProjectionGroup.O, ProjectionGroup.GateUp, ProjectionGroup.Down];

    private static readonly Projection[][] PartsOf = [[Projection.Q, Projection.K, Projection.V], [Projection.O], [Projection.Gate, Projection.Up], [Projection.Down]];

    public static IReadOnlyList<Projection> Parts(ProjectionGroup g) => PartsOf[(int)g];

    /// <summary>The group a projection is computed in, and its position among the group's parts.</summary>
    public static (ProjectionGroup Group, int Part) Of(Projection p) => p switch
    {
        Projection.Q => (ProjectionGroup.Qkv, 0), Projection.K => (ProjectionGroup.Qkv, 1), Projection.V => (ProjectionGroup.Qkv, 2),
        Projection.O => (ProjectionGroup.O, 0),
        Projection.Gate => (ProjectionGroup.GateUp, 0), Projection.Up => (ProjectionGroup.GateUp, 1),
        Projection.Down => (ProjectionGroup.Down, 0),
        _ => throw new ArgumentOutOfRangeException(nameof(p)),
    };
}
