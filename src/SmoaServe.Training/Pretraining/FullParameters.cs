using System.Text.Json;
using SmoaServe.Engine.Checkpoints;
using SmoaServe.Engine.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Training.Pretraining;

/// <summary>
/// Full-parameter training of a <see cref="LlamaModel"/>: every weight of the model (embeddings, the fused projection
/// groups, the norms) becomes a trainable leaf, and the forward needs no hook. The model must be float32 on its device.
/// </summary>
public sealed class FullParameters : ITrainable
{
    private readonly LlamaModel _model;
    public IReadOnlyList<TrainableTensor> Parameters { get; }

    public FullParameters(LlamaModel model)
    {
        if (model.Dtype != ScalarType.Float32) throw new ArgumentException($"full-parameter training needs a float32 model, got {model.Dtype}");
        _model = model;
        var list = new List<TrainableTensor> { new("model.embed_tokens.weight", model.EmbedTokens) };
        for (int l = 0; l < model.Layers.Count; l++)
        {
            var layer = model.Layers[l];
            list.Add(new($"model.layers.{l}.input_layernorm.weight", layer.InputNorm.Weight));
            foreach (var g in Enum.GetValues<ProjectionGroup>()) list.Add(new($"model.layers.{l}.{g}", model.GroupWeight(l, g)));
            list.Add(new($"model.layers.{l}.post_attention_layernorm.weight", layer.PostAttentionNorm.Weight));
        }
        list.Add(new("model.norm.weight", model.Norm.Weight));
        if (!model.Config.TieWordEmbeddings) list.Add(new("lm_head.weight", model.LmHead));
        foreach (var p in list) p.Value.requires_grad_(true);
        Parameters = list;
    }

    public long Count => Parameters.Sum(p => p.Value.NumberOfElements);

    public IAdapterBatch? CreateHook() => null;

    public string Describe() => "full-parameters:" + JsonSerializer.Serialize(_model.Config);

    public void Dispose()
    {
        foreach (var p in Parameters) p.Value.requires_grad_(false);
    }

    /// <summary>
    /// A new float32 Llama on the CPU with GPT-2-style initialisation: matrices N(0, 0.02²), the projections that write into
    /// the residual stream (o_proj, down_proj) scaled by 1/√(2·layers), norm gains 1. Deterministic for a seed.
    /// </summary>
    public static LlamaModel CreateRandom(ModelConfig config, ulong seed)
    {
        var generator = new torch.Generator(seed);
        double residualStd = 0.02 / Math.Sqrt(2.0 * config.NumLayers);
        using var noGrad = torch.no_grad();
        return new LlamaModel(config, torch.CPU, ScalarType.Float32, (name, shape) =>
        {
            if (name.EndsWith("norm.weight", StringComparison.Ordinal)) return torch.ones(shape, ScalarType.Float32);
            double std = name.Contains("o_proj") || name.Contains("down_proj") ? residualStd : 0.02;
            return torch.randn(shape, ScalarType.Float32, generator: generator).mul_(std);
        });
    }

    /// <summary>
    /// Writes the model as a Hugging Face Llama checkpoint: config.json and model.safetensors (float32, HF tensor names,
    /// lm_head omitted when tied), each atomically.
    /// </summary>
    public static void SaveHuggingFace(LlamaModel model, string dir, int? bosTokenId, IReadOnlyList<int> eosTokenIds)
    {
        Directory.CreateDirectory(dir);
        var c = model.Config;
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var tensors = new List<(string, Tensor)> { ("model.embed_tokens.weight", model.EmbedTokens.detach()) };
        for (int l = 0; l < c.NumLayers; l++)
        {
            string p = $"model.layers.{l}.";
            tensors.Add((p + "input_layernorm.weight", model.Layers[l].InputNorm.Weight.detach()));
            foreach (var proj in Enum.GetValues<Projection>())
                tensors.Add((p + ProjectionNames.ModulePath(proj) + ".weight", model.ProjectionWeight(l, proj).detach().contiguous()));
            tensors.Add((p + "post_attention_layernorm.weight", model.Layers[l].PostAttentionNorm.Weight.detach()));
        }
        tensors.Add(("model.norm.weight", model.Norm.Weight.detach()));
        if (!c.TieWordEmbeddings) tensors.Add(("lm_head.weight", model.LmHead.detach()));
        SafeTensorsWriter.Write(Path.Combine(dir, "model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });

        var config = new Dictionary<string, object?>
        {
            ["architectures"] = new[] { "LlamaForCausalLM" },
            ["attention_bias"] = false,
            ["attention_dropout"] = 0.0,
            ["bos_token_id"] = bosTokenId,
            ["eos_token_id"] = eosTokenIds.Count == 1 ? eosTokenIds[0] : eosTokenIds,
            ["head_dim"] = c.HeadDim,
            ["hidden_act"] = "silu",
            ["hidden_size"] = c.HiddenSize,
            ["initializer_range"] = 0.02,
            ["intermediate_size"] = c.IntermediateSize,
            ["max_position_embeddings"] = c.MaxPositionEmbeddings,
            ["mlp_bias"] = false,
            ["model_type"] = "llama",
            ["num_attention_heads"] = c.NumHeads,
            ["num_hidden_layers"] = c.NumLayers,
            ["num_key_value_heads"] = c.NumKvHeads,
            ["pretraining_tp"] = 1,
            ["rms_norm_eps"] = c.RmsNormEps,
            ["rope_theta"] = c.Rope.Theta,
            ["tie_word_embeddings"] = c.TieWordEmbeddings,
            ["torch_dtype"] = "float32",
            ["use_cache"] = true,
            ["vocab_size"] = c.VocabSize,
        };
        SmoaServe.Text.Tokenizers.AtomicFile.WriteAllText(Path.Combine(dir, "config.json"), JsonSerializer.Serialize(config, new JsonSerializerOptions { WriteIndented = true }) + "\n");
        var generation = new Dictionary<string, object?>
        {
            ["bos_token_id"] = bosTokenId,
            ["eos_token_id"] = eosTokenIds,
        };
        SmoaServe.Text.Tokenizers.AtomicFile.WriteAllText(Path.Combine(dir, "generation_config.json"), JsonSerializer.Serialize(generation, new JsonSerializerOptions { WriteIndented = true }) + "\n");
    }
}
