using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Model;

/// <summary>LlamaDecoderLayer: pre-norm attention and pre-norm MLP, each with a residual connection.</summary>
public sealed class DecoderLayer(RmsNorm inputNorm, Attention attention, RmsNorm postAttentionNorm, FeedForward mlp)
{
    public RmsNorm InputNorm { get; } = inputNorm;
    public Attention Attention { get; } = attention;
    public RmsNorm PostAttentionNorm { get; } = postAttentionNorm;
    public FeedForward Mlp { get; } = mlp;

    public Tensor Forward(Tensor h, ForwardState state) // [B, T, hidden]
    {
        h = h + Attention.Forward(InputNorm.Forward(h), state);
        return h + Mlp.Forward(PostAttentionNorm.Forward(h), state.Adapters);
    }
}
