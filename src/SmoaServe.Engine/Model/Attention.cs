using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace SmoaServe.Engine.Model;

/// <summary>
/// LlamaAttention with grouped-query attention (NKV key/value heads shared by NH / NKV query heads each).
/// q, k, v come from one GEMM; RoPE is applied to the q and k heads together.
/// </summary>
public sealed class Attention(int layer, int numHeads, int numKvHeads, int headDim, FusedLinear qkv, FusedLinear o)
{
    public Linear Q => qkv.Parts[0]; // [NH*D, hidden]
    public Linear K => qkv.Parts[1]; // [NKV*D, hidden]
    public Linear V => qkv.Parts[2]; // [NKV*D, hidden]
    public Linear O => o.Parts[0];   // [hidden, NH*D]
    internal FusedLinear Qkv => qkv;
    internal FusedLinear OGroup => o;

    private int Groups => numHeads / numKvHeads;

    public Tensor Forward(Tensor x, ForwardState state) // x [B, T, hidden]
    {
        long b = x.shape[0], t = x.shape[1];
        var adapters = state.Adapters;
        var projected = qkv.Forward(x, adapters);                             // [B, T, (NH+2NKV)*D]
        if (t == 1 && state.Cache is KvCache.DecodeAccess decode
            && decode.TryAttendOnCpu(layer, projected, state.Cos, state.Sin, numHeads) is { } fused)
            return o.Forward(fused, adapters);                                 // [B, 1, hidden]
        long qkWidth = (numHeads + numKvHeads) * headDim;
        var qkFlat = projected.narrow(-1, 0, qkWidth);                        // [B, T, (NH+NKV)*D]: q and k side by side
        var vFlat = projected.narrow(-1, qkWidth, numKvHeads * headDim);      // [B, T, NKV*D]
        var qk = qkFlat.view(b, t, numHeads + numKvHeads, headDim).transpose(1, 2); // [B, NH+NKV, T, D]
        var (cos, signedSin) = state.RotaryFactors();
        qk = RotaryEmbedding.ApplySigned(qk, cos, signedSin);
        var q = qk.narrow(1, 0, numHeads);                                    // [B, NH, T, D]
        var k = qk.narrow(1, numHeads, numKvHeads);                           // [B, NKV, T, D]
        var v = vFlat.view(b, t, numKvHeads, headDim).transpose(1, 2);        // [B, NKV, T, D]
        if (state.Cache is { } cache) (k, v) = cache.Append(layer, k, v);     // [B, NKV, L, D]

        var attended = t == 1 ? DecodeAttention(q, k, v, state) : RepeatedKvAttention(q, k, v, state); // [B, NH, T, D]
        var merged = attended.transpose(1, 2).reshape(b, t, numHeads * headDim);                                     // [B, T, NH*D]
        return o.Forward(merged, adapters);
    }

    /// <summary>Prefill: repeat each KV head for its query heads (HF repeat_kv), then SDPA.</summary>
    private Tensor RepeatedKvAttention(Tensor q, Tensor k, Tensor v, ForwardState state)
    {
        if (Groups > 1)
        {
            k = k.repeat_interleave(Groups, dim: 1); // [B, NH, L, D]
            v = v.repeat_interleave(Groups, dim: 1);
        }
        return F.scaled_dot_product_attention(q, k, v, state.Mask, is_casual: state.IsCausal);
    }

    /// <summary>
    /// Single-token decode, written out like HF's eager attention (scores in the compute dtype, softmax in float32):
    /// the G query heads of a KV head become G query rows of that head, so keys and values are read once instead of
    /// being repeated G times (head h uses KV head h / G, as with repeat_kv). Not SDPA: on CUDA, SDPA's cuDNN backend
    /// builds a new plan for every key length, i.e. every decode step (measured: ~80 ms per step on an H200).
    /// </summary>
    private Tensor DecodeAttention(Tensor q, Tensor k, Tensor v, ForwardState state)
    {
        long b = q.shape[0];
        var grouped = q.reshape(b, numKvHeads, Groups, headDim);                          // [B, NKV, G, D]
        var scores = torch.matmul(grouped, k.transpose(2, 3)).mul_(1.0 / Math.Sqrt(headDim)); // [B, NKV, G, L]
        if (state.AttentionBias is { } bias) scores = scores.add_(bias);                                      // [B, 1, 1, L]
        else if (state.Mask is { } mask) scores = scores.masked_fill(mask.logical_not(), double.NegativeInfinity);
        var probs = scores.softmax(-1, ScalarType.Float32);
        if (probs.dtype != q.dtype) probs = probs.to_type(q.dtype);
        var attended = torch.matmul(probs, v);                                            // [B, NKV, G, D]
        return attended.reshape(b, numHeads, 1, headDim);                                 // [B, NH, 1, D]
    }
}
