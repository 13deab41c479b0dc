using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Model;

/// <summary>
/// The adapters of one forward batch: row b of the batch uses its own adapter (or none).
/// The Llama forward calls <see cref="Apply"/> after every projection GEMM (once per <see cref="ProjectionGroup"/>); the
/// implementation adds ΔW x for each row and part on the fly (no merged weights, no ΔW kept).
/// </summary>
public interface IAdapterBatch
{
    /// <param name="x">the GEMM's input [B, T, in]</param>
    /// <param name="y">its base output W x (+ bias) [B, T, Σ out]: the group's parts side by side</param>
    /// <returns>y plus each row's adapter updates (y may be updated in place); y itself when no row adapts this group.</returns>
    Tensor Apply(int layer, ProjectionGroup group, Tensor x, Tensor y);
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
