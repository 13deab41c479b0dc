using System.Text.Json.Nodes;
using SmoaServe.Engine.Checkpoints;
using SmoaServe.Engine.Model;
using TorchSharp;
using static TorchSharp.torch;
using static SmoaServe.Tests.TestTensors;

namespace SmoaServe.Engine.Tests;

/// <summary>The forward pass against Hugging Face's logits for llama-a (expected_base.safetensors).</summary>
public sealed class LlamaForwardTests
{
    private const double Tolerance = 1e-3;

    [Fact]
    public void Logits_of_all_three_sequences_match_hugging_face()
    {
        using var model = LlamaModel.Load(LlamaA);
        using var expected = SafeTensorsFile.Open(ExpectedBase);
        for (int n = 0; n < 3; n++)
        {
            var ids = ReadIds(expected, $"ids_{n}");
            var diff = MaxAbsDiff(Logits(model, ids), ReadFloats(expected, $"logits_{n}"));
            Assert.True(diff <= Tolerance, $"ids_{n} (T={ids.Length}): max |Δlogit| = {diff:E3} > {Tolerance}");
        }
    }

    [Fact]
    public void Batched_forward_of_equal_length_rows_matches_rows_alone()
    {
        using var model = LlamaModel.Load(LlamaA);
        using var expected = SafeTensorsFile.Open(ExpectedBase);
        var ids = ReadIds(expected, "ids_2");
        var a = ids[..40];
        var b = ids[40..80];
        using var scope = torch.NewDisposeScope();
        var batch = torch.tensor(a.Concat(b).ToArray(), dtype: ScalarType.Int64).view(2, 40);
        var logits = model.Forward(batch).data<float>().ToArray();
        Assert.True(MaxAbsDiff(logits.AsSpan(0, 40 * 1024), Logits(model, a)) < 1e-4);
        Assert.True(MaxAbsDiff(logits.AsSpan(40 * 1024), Logits(model, b)) < 1e-4);
    }

    [Fact]
    public void Bfloat16_copy_of_the_weights_loads_and_scores_close_to_the_reference()
    {
        string dir = TempDir();
        CopyFixtureFilesExceptWeights(dir);
        using (var src = SafeTensorsFile.Open(Path.Combine(LlamaA, "model.safetensors")))
        {
            var tensors = src.Names.Select(n => (n, src.ReadTensor(n, ScalarType.BFloat16))).ToList();
            SafeTensorsWriter.Write(Path.Combine(dir, "model.safetensors"), tensors);
            foreach (var (_, t) in tensors) t.Dispose();
        }
        using (var copy = SafeTensorsFile.Open(Path.Combine(dir, "model.safetensors")))
            Assert.All(copy.Names, n => Assert.Equal("BF16", copy.Info(n).DType));

        using var expected = SafeTensorsFile.Open(ExpectedBase);
        var ids = ReadIds(expected, "ids_1");
        var reference = ReadFloats(expected, "logits_1");
        // float32 compute on bf16-rounded weights (8-bit mantissa: relative weight error ≤ 2^-9)
        using (var model = LlamaModel.Load(dir, new ModelLoadOptions(Dtype: ScalarType.Float32)))
        {
            double diff = MaxAbsDiff(Logits(model, ids), reference);
            Assert.True(diff < 0.05 * MaxAbs(reference), $"bf16 weights / fp32 compute: max |Δ| {diff:E3}");
        }
        // bf16 compute as well
        using (var model = LlamaModel.Load(dir, new ModelLoadOptions(Dtype: ScalarType.BFloat16)))
        {
            Assert.Equal(ScalarType.BFloat16, model.ProjectionWeight(0, Projection.Q).dtype);
            double diff = MaxAbsDiff(Logits(model, ids), reference);
            Assert.True(diff < 0.1 * MaxAbs(reference), $"bf16 compute: max |Δ| {diff:E3}");
        }
    }

    [Fact]
    public void Two_shard_copy_with_index_loads_and_matches_the_reference()
    {
        string dir = TempDir();
        CopyFixtureFilesExceptWeights(dir);
        var weightMap = new JsonObject();
        using (var src = SafeTensorsFile.Open(Path.Combine(LlamaA, "model.safetensors")))
        {
            var names = src.Names.ToList();
            var halves = new[] { names.Take(names.Count / 2).ToList(), names.Skip(names.Count / 2).ToList() };
            for (int s = 0; s < 2; s++)
            {
                string file = $"model-0000{s + 1}-of-00002.safetensors";
                var tensors = halves[s].Select(n => (n, src.ReadTensor(n))).ToList();
                SafeTensorsWriter.Write(Path.Combine(dir, file), tensors, new Dictionary<string, string> { ["format"] = "pt" });
                foreach (var (n, t) in tensors) { weightMap[n] = file; t.Dispose(); }
            }
        }
        File.WriteAllText(Path.Combine(dir, "model.safetensors.index.json"),
            new JsonObject { ["metadata"] = new JsonObject(), ["weight_map"] = weightMap }.ToJsonString());

        using var model = LlamaModel.Load(dir);
        using var expected = SafeTensorsFile.Open(ExpectedBase);
        var ids = ReadIds(expected, "ids_2");
        double diff = MaxAbsDiff(Logits(model, ids), ReadFloats(expected, "logits_2"));
        Assert.True(diff <= Tolerance, $"sharded: max |Δ| {diff:E3}");
    }

    [Fact]
    public void Tied_embeddings_use_embed_tokens_as_lm_head()
    {
        string dir = TempDir();
        CopyFixtureFilesExceptWeights(dir);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!.AsObject();
        config["tie_word_embeddings"] = true;
        File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString());
        float[] embed;
        using (var src = SafeTensorsFile.Open(Path.Combine(LlamaA, "model.safetensors")))
        {
            var tensors = src.Names.Where(n => n != "lm_head.weight").Select(n => (n, src.ReadTensor(n))).ToList();
            SafeTensorsWriter.Write(Path.Combine(dir, "model.safetensors"), tensors);
            embed = tensors.Single(x => x.n == "model.embed_tokens.weight").Item2.data<float>().ToArray();
            foreach (var (_, t) in tensors) t.Dispose();
        }

        using var model = LlamaModel.Load(dir);
        Assert.Equal(embed, model.LmHead.data<float>().ToArray());

        // The logits are the final hidden state times embed_tokensᵀ: check against an independent matmul.
        using var scope = torch.NewDisposeScope();
        var ids = torch.tensor(new long[] { 5, 17, 300, 2 }, dtype: ScalarType.Int64).view(1, 4);
        var logits = model.Forward(ids);
        var h = model.EmbedTokens.index_select(0, ids.view(-1)).unsqueeze(0);
        var state = new ForwardState { Cos = model.Rotary.CosSin(torch.arange(4L).view(1, 4), ScalarType.Float32).Cos,
            Sin = model.Rotary.CosSin(torch.arange(4L).view(1, 4), ScalarType.Float32).Sin, IsCausal = true };
        foreach (var layer in model.Layers) h = layer.Forward(h, state);
        var expectedLogits = torch.matmul(model.Norm.Forward(h), torch.tensor(embed).view(1024, 64).t());
        Assert.True(MaxAbsDiff(logits.data<float>().ToArray(), expectedLogits.data<float>().ToArray()) < 1e-5);
    }

    [Fact]
    public void Missing_tensor_is_an_error_naming_the_key()
    {
        string dir = TempDir();
        CopyFixtureFilesExceptWeights(dir);
        using (var src = SafeTensorsFile.Open(Path.Combine(LlamaA, "model.safetensors")))
        {
            var tensors = src.Names.Where(n => n != "model.layers.1.mlp.up_proj.weight").Select(n => (n, src.ReadTensor(n))).ToList();
            SafeTensorsWriter.Write(Path.Combine(dir, "model.safetensors"), tensors);
            foreach (var (_, t) in tensors) t.Dispose();
        }
        var e = Assert.Throws<InvalidDataException>(() => LlamaModel.Load(dir));
        Assert.Contains("model.layers.1.mlp.up_proj.weight", e.Message);
        Assert.Contains(dir, e.Message);
    }

    private static double MaxAbs(float[] x) => x.Max(v => Math.Abs((double)v));
}
