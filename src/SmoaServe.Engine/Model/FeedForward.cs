using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace SmoaServe.Engine.Model;

/// <summary>LlamaMLP: down(silu(gate(x)) * up(x)), gate and up in one GEMM, each projection followed by its adapter update.</summary>
public sealed class FeedForward(int layer, FusedLinear gateUp, Linear down)
{
    public Linear Gate => gateUp.Parts[0]; // [ffn, hidden]
    public Linear Up => gateUp.Parts[1];   // [ffn, hidden]
    public Linear Down { get; } = down;    // [hidden, ffn]
    internal FusedLinear GateUp => gateUp;

    public Tensor Forward(Tensor x, IAdapterBatch? adapters) // x [B, T, hidden]
    {
        var gu = gateUp.Forward(x, adapters);        // gate, up: [B, T, ffn] each
        var h = F.silu(gu[0]) * gu[1];
        return Down.Forward(h, layer, Projection.Down, adapters); // [B, T, hidden]
    }
}
