using TorchSharp;
using static TorchSharp.torch;

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
/// The adapters of one forward batch: row b of the batch uses its own adapter (or none).
/// The Llama forward calls <see cref="Apply"/> after every projection; the implementation adds
/// ΔW x for each row on the fly (no merged weights, no dense ΔW on the hot path).
/// </summary>
public interface IAdapterBatch
{
    /// <param name="x">projection input [B, T, in]</param>
    /// <param name="y">base output W x (+ bias) [B, T, out]</param>
    /// <returns>y plus each row's adapter update; y itself when no row adapts this module.</returns>
    Tensor Apply(int layer, Projection projection, Tensor x, Tensor y);
}

/// <summary>
/// Where the model runner gets adapters from (implemented by the adapter registry in Engine/Adapters).
/// Called on the model thread only.
/// </summary>
public interface IAdapterSource
{
    bool Contains(string adapterId);

    /// <summary>
    /// The adapters for one forward over a batch whose row b uses <paramref name="rowAdapterIds"/>[b] (null = base).
    /// Returns null when no row has an adapter, so base-only batches pay nothing.
    /// </summary>
    IAdapterBatch? CreateBatch(IReadOnlyList<string?> rowAdapterIds);
}
