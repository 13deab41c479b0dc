using SmoaServe.Engine.Checkpoints;
using SmoaServe.Engine.Generation;
using SmoaServe.Engine.Model;
using SmoaServe.Engine.Runner;
using SmoaServe.Tests;
using TorchSharp;
using ScalarType = TorchSharp.torch.ScalarType;
using static SmoaServe.Tests.TestTensors;

namespace SmoaServe.Engine.Tests;

/// <summary>
/// Checkpoints written by Hugging Face transformers 5.17 with its own logits (tests/fixtures/make_hf_reference.py):
/// llama-b: bf16 weights, tied embeddings, 3:1 GQA, llama3 rope (original_max_position_embeddings 64, positions to 130);
/// llama-c: f16 weights, attention + mlp biases, linear rope, head_dim ≠ hidden/heads, 2 shards, old config form.
/// </summary>
public sealed class HfReferenceTests
{
    private static string Data(string name) => Path.Combine(FixturePaths.Fixtures, name);

    [Theory]
    [InlineData("llama-b")]
    [InlineData("llama-c")]
    public void Float32_logits_match_hugging_face(string name)
    {
        using var model = LlamaModel.Load(Data(name));
        using var expected = SafeTensorsFile.Open(Path.Combine(Data(name), "expected.safetensors"));
        for (int n = 0; n < 2; n++)
        {
            var ids = ReadIds(expected, $"ids_{n}");
            double diff = MaxAbsDiff(Logits(model, ids), ReadFloats(expected, $"logits_{n}"));
            Assert.True(diff <= 1e-3, $"{name} ids_{n} (T={ids.Length}): max |Δ| {diff:E3}");
        }
    }

    [Theory]
    [InlineData("llama-b")]
    [InlineData("llama-c")]
    public void Greedy_continuation_through_the_kv_cache_matches_hugging_face(string name)
    {
        using var model = LlamaModel.Load(Data(name));
        using var expected = SafeTensorsFile.Open(Path.Combine(Data(name), "expected.safetensors"));
        var prompt = ReadIds(expected, "greedy_prompt").Select(x => (int)x).ToArray();
        var continuation = ReadIds(expected, "greedy_continuation").Select(x => (int)x).ToArray();
        using var runner = new ModelRunner(model, 1, 160);
        var result = new SequenceGenerator(runner) { PrefillChunk = 40 }.Generate(new SequenceRequest { PromptIds = prompt, Sampling = new SamplingParams { MaxTokens = continuation.Length } });
        Assert.Equal(continuation, result.Ids);
    }

    [Fact]
    public void Llama_b_is_tied_gqa_llama3_and_loads_bf16_weights()
    {
        var config = ModelConfig.Load(Data("llama-b"));
        Assert.True(config.TieWordEmbeddings);
        Assert.Equal(3, config.KvGroups);
        Assert.Equal("llama3", config.Rope.Type);
        Assert.Equal([2, 3], GenerationConfig.Load(Data("llama-b"), config).EosTokenIds);
        using var model = LlamaModel.Load(Data("llama-b"));
        Assert.Same(model.EmbedTokens, model.LmHead);
    }

    [Fact]
    public void Bfloat16_compute_is_close_to_hugging_face_bfloat16()
    {
        using var model = LlamaModel.Load(Data("llama-b"), new ModelLoadOptions(Dtype: ScalarType.BFloat16));
        using var expected = SafeTensorsFile.Open(Path.Combine(Data("llama-b"), "expected.safetensors"));
        var ids = ReadIds(expected, "ids_1");
        var hfBf16 = ReadFloats(expected, "logits_bf16_1");
        var hfF32 = ReadFloats(expected, "logits_1");
        var ours = Logits(model, ids);
        double diff = MaxAbsDiff(ours, hfBf16), scale = hfF32.Max(v => Math.Abs((double)v));
        double hfOwnError = MaxAbsDiff(hfBf16, hfF32); // how far HF's own bf16 forward is from float32
        Assert.True(diff <= Math.Max(2 * hfOwnError, 0.02 * scale), $"bf16: max |Δ| vs HF bf16 {diff:E3} (HF bf16 vs f32: {hfOwnError:E3})");
    }
}
