using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace SmoaServe.Engine.Model;

/// <summary>LlamaMLP: down(silu(gate(x)) * up(x)), gate and up in one GEMM, each projection followed by its adapter update.</summary>
public sealed class FeedForward(FusedLinear gateUp, FusedLinear down)
{
    public Linear Gate => gateUp.Parts[0]; // [ffn, hidden]
    public Linear Up => gateUp.Parts[1];   // [ffn, hidden]
    public Linear Down => down.Parts[0];   // [hidden, ffn]
    internal FusedLinear GateUp => gateUp;
    internal FusedLinear DownGroup => down;

    public Tensor Forward(Tensor x, IAdapterBatch? adapters) // x [B, T, hidden]
    {
        var gu = gateUp.Forward(x, adapters);                        // [B, T, 2·ffn]: gate, up
        var h = CpuDecode.Applies(gu, gu.shape[^1])
            ? CpuDecode.SiluMul(gu)                                  // decode on the CPU: one pass
            : F.silu(gateUp.Part(gu, 0)) * gateUp.Part(gu, 1);       // [B, T, ffn]
        return down.Forward(h, adapters);                            // [B, T, hidden]
    }
}
