using SmoaServe.Engine.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace SmoaServe.Engine.Model;

/// <summary>
/// A frozen Llama (Hugging Face LlamaForCausalLM) in TorchSharp: embeddings, decoder layers, final norm, lm_head.
/// Weights are plain tensors in the compute dtype on the model's device, owned by the model (do not dispose them).
/// All calls must come from the model thread.
/// </summary>
public sealed class LlamaModel : IDisposable
{
    public ModelConfig Config { get; }
    public Device Device { get; }
    public ScalarType Dtype { get; }
    /// <summary>Checkpoint directory, or null for an in-memory (synthetic) model.</summary>
    public string? Directory { get; init; }

    public Tensor EmbedTokens { get; }       // [vocab, hidden]
    public IReadOnlyList<DecoderLayer> Layers { get; }
    public RmsNorm Norm { get; }
    public Tensor LmHead { get; }            // [vocab, hidden] (the same tensor as EmbedTokens when tied)
    /// <summary>The CPU decode kernel over <see cref="LmHead"/>, or null (not a float32 CPU model).</summary>
    public CpuGemv? LmHeadKernel { get; private set; }
    /// <summary>How the weights streamed by decode are stored (float32 unless a CPU model was loaded with bf16 / int8).</summary>
    public WeightStorage WeightStorage { get; private set; }
    public RotaryEmbedding Rotary { get; }

    private readonly List<Tensor> _owned = [];
    private readonly List<FusedLinear> _fused = [];

    /// <summary>
    /// Builds the model from a weight source: <paramref name="weight"/>(Hugging Face name, expected shape) returns that
    /// tensor in the compute dtype on the device (the model takes ownership), or throws naming the missing key.
    /// </summary>
    public LlamaModel(ModelConfig config, Device device, ScalarType dtype, Func<string, long[], Tensor> weight, WeightStorage weights = WeightStorage.Float32)
    {
        Config = config;
        Device = device;
        Dtype = dtype;
        Tensor Required(string name, params long[] shape) => Own(weight(name, shape));
        try
        {
            int h = config.HiddenSize, ffn = config.IntermediateSize, d = config.HeadDim;
            int nh = config.NumHeads, nkv = config.NumKvHeads;
            EmbedTokens = Required("model.embed_tokens.weight", config.VocabSize, h);

            var layers = new List<DecoderLayer>();
            for (int l = 0; l < config.NumLayers; l++)
            {
                string p = $"model.layers.{l}.";
                (Tensor, Tensor?) Part(Projection proj, bool hasBias, long outDim, long inDim)
                {
                    string module = p + ProjectionNames.ModulePath(proj);
                    return (weight(module + ".weight", [outDim, inDim]), hasBias ? weight(module + ".bias", [outDim]) : null);
                }
                FusedLinear Fused(ProjectionGroup group, params (Tensor, Tensor?)[] parts) => OwnFused(new FusedLinear(l, group, parts));

                bool ab = config.AttentionBias, mb = config.MlpBias;
                var attention = new Attention(l, nh, nkv, d,
                    Fused(ProjectionGroup.Qkv, Part(Projection.Q, ab, nh * d, h), Part(Projection.K, ab, nkv * d, h), Part(Projection.V, ab, nkv * d, h)),
                    Fused(ProjectionGroup.O, Part(Projection.O, ab, h, nh * d)));
                var mlp = new FeedForward(
                    Fused(ProjectionGroup.GateUp, Part(Projection.Gate, mb, ffn, h), Part(Projection.Up, mb, ffn, h)),
                    Fused(ProjectionGroup.Down, Part(Projection.Down, mb, h, ffn)));
                layers.Add(new DecoderLayer(
                    new RmsNorm(Required(p + "input_layernorm.weight", h), config.RmsNormEps),
                    attention,
                    new RmsNorm(Required(p + "post_attention_layernorm.weight", h), config.RmsNormEps),
                    mlp));
            }
            Layers = layers;
            Norm = new RmsNorm(Required("model.norm.weight", h), config.RmsNormEps);
            // Tied embeddings: lm_head is embed_tokens (HF ties them and omits lm_head.weight from the file).
            LmHead = config.TieWordEmbeddings ? EmbedTokens : Required("lm_head.weight", config.VocabSize, h);
            Rotary = new RotaryEmbedding(config.Rope, d, device);
            UseCpuKernels(weights);
        }
        catch
        {
            Dispose(); // a failed load (missing tensor, out of memory) frees what it already placed on the device
            throw;
        }
    }

    /// <summary>
    /// Float32 CPU models decode through <see cref="CpuGemv"/> (every projection group and lm_head). With bfloat16 or
    /// int8 storage the weights are rounded once here and the model's float32 weights hold the rounded values from then
    /// on: the base model is the dequantized W everywhere (prefill, adapter anchors M_k, merges).
    /// </summary>
    private void UseCpuKernels(WeightStorage weights)
    {
        if (Device.type != DeviceType.CPU || Dtype != ScalarType.Float32)
        {
            if (weights != WeightStorage.Float32) throw new ArgumentException($"{weights} weight storage is for float32 models on the CPU");
            return;
        }
        foreach (var f in _fused) f.UseKernel(weights);
        LmHeadKernel = new CpuGemv(LmHead, null, weights);
        WeightStorage = weights;
    }

    /// <summary>Bytes of weights the CPU decode kernels stream per step (storage dtype, int8 scales included); 0 without kernels.</summary>
    public long StreamedWeightBytes => (LmHeadKernel?.WeightBytes ?? 0) + _fused.Sum(f => f.Kernel?.WeightBytes ?? 0);

    private FusedLinear OwnFused(FusedLinear f)
    {
        _fused.Add(f);
        return f;
    }

    private Tensor Own(Tensor t)
    {
        t = t.DetachFromDisposeScope();
        _owned.Add(t);
        return t;
    }

    /// <summary>Loads config.json and model.safetensors (or its shards) from <paramref name="dir"/>, tensor by tensor.</summary>
    public static LlamaModel Load(string dir, ModelLoadOptions? options = null)
    {
        options ??= ModelLoadOptions.Cpu;
        var config = ModelConfig.Load(dir);
        var device = options.ResolvedDevice;
        var dtype = options.ResolvedDtype;
        using var files = CheckpointFiles.Open(dir);
        // Untied but no lm_head.weight: Hugging Face would initialise a random lm_head; refuse instead of scoring garbage.
        if (!config.TieWordEmbeddings && !files.Contains("lm_head.weight") && files.Contains("model.embed_tokens.weight"))
            throw new InvalidDataException($"{dir}: tensor 'lm_head.weight' is missing and config.json has tie_word_embeddings=false");
        using var noGrad = torch.no_grad();
        return new LlamaModel(config, device, dtype, (name, shape) =>
        {
            var info = files.Info(name); // missing → error naming checkpoint and key
            if (!info.Shape.SequenceEqual(shape))
                throw new InvalidDataException($"{files.FileOf(name).Path}: tensor '{name}' has shape [{string.Join(", ", info.Shape)}], config.json implies [{string.Join(", ", shape)}]");
            if (info.DType is not ("F32" or "BF16" or "F16" or "F64"))
                throw new InvalidDataException($"{files.FileOf(name).Path}: tensor '{name}' has dtype {info.DType}; weights must be F32, BF16 or F16");
            return files.Read(name, dtype, device);
        }, options.Weights) { Directory = dir };
    }

    /// <summary>Weight of one projection, [out, in], compute dtype, on the model's device. Owned by the model.</summary>
    public Tensor ProjectionWeight(int layer, Projection p) => ProjectionLinear(layer, p).Weight;

    /// <summary>Bias of one projection [out], or null (attention_bias / mlp_bias false).</summary>
    public Tensor? ProjectionBias(int layer, Projection p) => ProjectionLinear(layer, p).Bias;

    /// <summary>The fused weight of one projection group, [Σ out, in] (the parts' rows in <see cref="ProjectionGroups.Parts"/> order). Owned by the model.</summary>
    public Tensor GroupWeight(int layer, ProjectionGroup g)
    {
        if (layer < 0 || layer >= Layers.Count) throw new ArgumentOutOfRangeException(nameof(layer), $"layer {layer} of {Layers.Count}");
        var l = Layers[layer];
        return g switch
        {
            ProjectionGroup.Qkv => l.Attention.Qkv.Weight, ProjectionGroup.O => l.Attention.OGroup.Weight,
            ProjectionGroup.GateUp => l.Mlp.GateUp.Weight, ProjectionGroup.Down => l.Mlp.DownGroup.Weight,
            _ => throw new ArgumentOutOfRangeException(nameof(g)),
        };
    }

    /// <summary>The base GEMM of one projection group, x [B, T, in] → [B, T, Σ out] (no adapters): what a decode step streams.</summary>
    public Tensor ProjectionGroupForward(int layer, ProjectionGroup g, Tensor x)
    {
        if (layer < 0 || layer >= Layers.Count) throw new ArgumentOutOfRangeException(nameof(layer), $"layer {layer} of {Layers.Count}");
        var l = Layers[layer];
        var fused = g switch
        {
            ProjectionGroup.Qkv => l.Attention.Qkv, ProjectionGroup.O => l.Attention.OGroup,
            ProjectionGroup.GateUp => l.Mlp.GateUp, ProjectionGroup.Down => l.Mlp.DownGroup,
            _ => throw new ArgumentOutOfRangeException(nameof(g)),
        };
        return fused.Forward(x, null);
    }

    /// <summary>lm_head over final hidden states [B, T, hidden] → logits [B, T, vocab].</summary>
    public Tensor LmHeadForward(Tensor h) =>
        LmHeadKernel is { } k && CpuGemv.Enabled && k.Accepts(h) ? k.Forward(h) : F.linear(h, LmHead);

    public Linear ProjectionLinear(int layer, Projection p)
    {
        if (layer < 0 || layer >= Layers.Count) throw new ArgumentOutOfRangeException(nameof(layer), $"layer {layer} of {Layers.Count}");
        var l = Layers[layer];
        return p switch
        {
            Projection.Q => l.Attention.Q, Projection.K => l.Attention.K, Projection.V => l.Attention.V, Projection.O => l.Attention.O,
            Projection.Gate => l.Mlp.Gate, Projection.Up => l.Mlp.Up, Projection.Down => l.Mlp.Down,
            _ => throw new ArgumentOutOfRangeException(nameof(p)),
        };
    }

    /// <summary>
    /// Plain forward over whole sequences, positions 0..T-1, causal, no KV cache (what `smoa score` and the tests use).
    /// </summary>
    /// <param name="inputIds">int64 [B, T]</param>
    /// <returns>logits [B, T, vocab] in the compute dtype</returns>
    public Tensor Forward(Tensor inputIds, IAdapterBatch? adapters = null)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        long b = inputIds.shape[0], t = inputIds.shape[1];
        var positions = torch.arange(t, dtype: ScalarType.Int64, device: Device).unsqueeze(0).expand(b, t);
        var (cos, sin) = Rotary.CosSin(positions, Dtype);
        var state = new ForwardState { Cos = cos, Sin = sin, IsCausal = t > 1, Adapters = adapters };
        return Forward(inputIds, state).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Forward with an explicit state (KV cache, masks); <paramref name="lastTokenOnly"/> computes logits of the last
    /// position only, <paramref name="outputPositions"/> (int64 [B]) of one chosen position per row.
    /// </summary>
    /// <returns>logits [B, T or 1, vocab] in the compute dtype</returns>
    public Tensor Forward(Tensor inputIds, ForwardState state, bool lastTokenOnly = false, Tensor? outputPositions = null)
    {
        CheckIds(inputIds);
        var h = Embed(inputIds);                   // [B, T, hidden]
        foreach (var layer in Layers) h = layer.Forward(h, state);
        if (outputPositions is not null) h = h.gather(1, outputPositions.view(-1, 1, 1).expand(h.shape[0], 1, h.shape[2]));   // [B, 1, hidden]
        else if (lastTokenOnly) h = h.narrow(1, h.shape[1] - 1, 1);
        h = Norm.Forward(h);
        return LmHeadForward(h);                    // [B, T, vocab]
    }

    private Tensor Embed(Tensor ids) // [B, T] → [B, T, hidden]
    {
        long b = ids.shape[0], t = ids.shape[1];
        return EmbedTokens.index_select(0, ids.reshape(-1)).view(b, t, Config.HiddenSize);
    }

    private void CheckIds(Tensor ids)
    {
        if (ids.dim() != 2 || ids.dtype != ScalarType.Int64) throw new ArgumentException($"input ids must be int64 [B, T], got {ids.dtype} [{string.Join(", ", ids.shape)}]");
        if (ids.shape[1] == 0) throw new ArgumentException("input ids are empty");
    }

    public void Dispose()
    {
        foreach (var t in _owned) t.Dispose();
        _owned.Clear();
        foreach (var f in _fused) f.Dispose();
        _fused.Clear();
        LmHeadKernel?.Dispose();
        Rotary?.InvFreq.Dispose();
    }
}
