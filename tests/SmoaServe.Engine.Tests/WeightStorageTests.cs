using SmoaServe.Engine.Checkpoints;
using SmoaServe.Engine.Model;
using TorchSharp;
using static SmoaServe.Tests.TestTensors;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Tests;

/// <summary>
/// bf16 / int8 weight storage against the Hugging Face float32 logits of llama-a: the error bounds stated in
/// docs/cpu-performance.md (max |logit error| ≤ 0.05 for bf16, ≤ 0.2 for int8; top-1 agreement ≥ 90 %).
/// </summary>
public sealed class WeightStorageTests
{
    [Theory]
    [InlineData(WeightStorage.BFloat16, 0.05)]
    [InlineData(WeightStorage.Int8, 0.2)]
    public void Reduced_precision_logits_stay_within_the_stated_bound_of_hugging_face_float32(WeightStorage storage, double bound)
    {
        using var expected = SafeTensorsFile.Open(ExpectedBase);
        var ids = ReadIds(expected, "ids_1");
        var reference = ReadFloats(expected, "logits_1");                          // [33, 1024] from Hugging Face, float32
        using var model = LlamaModel.Load(LlamaA, new ModelLoadOptions(Weights: storage));
        Assert.Equal(storage, model.WeightStorage);
        using var scope = torch.NewDisposeScope();
        var logits = model.Forward(torch.tensor(ids).view(1, -1)).to_type(ScalarType.Float32).contiguous().data<float>().ToArray();
        double err = MaxAbsDiff(logits, reference);
        Assert.True(err <= bound, $"{storage}: max |logit error| {err:E3} > {bound}");
        Assert.True(err > 1e-4, $"{storage}: error {err:E3} is that of float32: the weights were not rounded");
        int v = 1024, agree = 0, positions = ids.Length;
        for (int t = 0; t < positions; t++)
            if (ArgMax(logits.AsSpan(t * v, v)) == ArgMax(reference.AsSpan(t * v, v))) agree++;
        Assert.True(agree >= 0.9 * positions, $"{storage}: top-1 agreement {agree}/{positions}");
    }

    [Fact]
    public void Reduced_storage_halves_or_quarters_the_bytes_decode_streams()
    {
        using var f32 = LlamaModel.Load(LlamaA);
        using var bf16 = LlamaModel.Load(LlamaA, new ModelLoadOptions(Weights: WeightStorage.BFloat16));
        using var int8 = LlamaModel.Load(LlamaA, new ModelLoadOptions(Weights: WeightStorage.Int8));
        Assert.Equal(f32.StreamedWeightBytes, 2 * bf16.StreamedWeightBytes);
        Assert.True(int8.StreamedWeightBytes < 0.3 * f32.StreamedWeightBytes);
    }

    [Fact]
    public void Weights_dtype_names_parse_and_a_bad_one_is_a_settings_problem()
    {
        Assert.Equal(WeightStorage.Float32, WeightStorages.Parse(null));
        Assert.Equal(WeightStorage.BFloat16, WeightStorages.Parse("bf16"));
        Assert.Equal(WeightStorage.Int8, WeightStorages.Parse(" INT8 "));
        Assert.Throws<ArgumentException>(() => WeightStorages.Parse("int4"));
        var options = new SmoaServe.Engine.Hosting.EngineOptions { Model = "m", WeightsDtype = "fp8" };
        Assert.Contains(options.Problems(), p => p.Contains("fp8"));
    }

    private static int ArgMax(ReadOnlySpan<float> v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++) if (v[i] > v[best]) best = i;
        return best;
    }
}
