using SmoaServe.Engine.Model;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace SmoaServe.Engine.Tests;

/// <summary>The CPU decode kernel against F.linear: every storage, odd shapes (vector tails, row tails), bias.</summary>
public sealed class CpuGemvTests
{
    private static double MaxAbs(Tensor a, Tensor b) => (a - b).abs().max().item<float>();

    [Theory]
    [InlineData(1, 37, 29)]   // K not a multiple of 8, N not a multiple of 4
    [InlineData(3, 64, 130)]  // odd row count: 2-row tiles and a 1-row tail
    [InlineData(5, 20, 130)]  // 4-row input tile and a 1-row tail, K with a 16-element remainder
    [InlineData(16, 1280, 768)]
    public void Float32_kernel_matches_linear(int rows, int n, int k)
    {
        using var scope = torch.NewDisposeScope();
        var g = new torch.Generator(7);
        var w = torch.randn([n, k], generator: g);
        var bias = torch.randn([n], generator: g);
        var x = torch.randn([rows, 1, k], generator: g);
        var reference = F.linear(x, w, bias);
        using var kernel = new CpuGemv(w, bias, WeightStorage.Float32);
        var y = kernel.Forward(x);
        Assert.Equal(reference.shape, y.shape);
        Assert.True(MaxAbs(y, reference) <= 1e-4, $"max |Δ| {MaxAbs(y, reference):E3}");
    }

    [Fact]
    public void Bfloat16_storage_multiplies_by_the_rounded_weights_and_writes_them_back()
    {
        using var scope = torch.NewDisposeScope();
        var g = new torch.Generator(8);
        var w = torch.randn([61, 203], generator: g);
        var rounded = w.to_type(ScalarType.BFloat16).to_type(ScalarType.Float32);   // round to nearest even, as torch does
        var x = torch.randn([5, 203], generator: g);
        using var kernel = new CpuGemv(w, null, WeightStorage.BFloat16);
        Assert.Equal(0, MaxAbs(w, rounded));                                           // the model's W is now the rounded W
        Assert.True(MaxAbs(kernel.Forward(x), F.linear(x, rounded)) <= 1e-4);
        Assert.Equal(61L * 203 * 2, kernel.WeightBytes);
    }

    [Fact]
    public void Int8_storage_is_per_row_symmetric_and_matches_the_dequantized_weights()
    {
        using var scope = torch.NewDisposeScope();
        var g = new torch.Generator(9);
        var w = torch.randn([33, 100], generator: g);
        w[3] = torch.zeros(100);                                                        // an all-zero row stays zero
        var original = w.clone();
        var x = torch.randn([2, 100], generator: g);
        using var kernel = new CpuGemv(w, null, WeightStorage.Int8);
        // reference: scale = max|row| / 127, q = round(W / scale) in [-127, 127], W̃ = q · scale
        var host = original.data<float>().ToArray();
        var expected = new float[host.Length];
        for (int r = 0; r < 33; r++)
        {
            float max = 0;
            for (int c = 0; c < 100; c++) max = Math.Max(max, Math.Abs(host[r * 100 + c]));
            float scale = Math.Max(max / 127f, 1e-30f);
            for (int c = 0; c < 100; c++) expected[r * 100 + c] = MathF.Round(host[r * 100 + c] / scale, MidpointRounding.ToEven) * scale;
        }
        var dequantized = torch.tensor(expected).view(33, 100);
        Assert.True(MaxAbs(w, dequantized) <= 1e-6, $"W̃ max |Δ| {MaxAbs(w, dequantized):E3}");
        Assert.True(MaxAbs(w, original) <= original.abs().max().item<float>() / 127 / 2 * 1.0001);   // at most half a step
        Assert.True(MaxAbs(kernel.Forward(x), F.linear(x, dequantized)) <= 1e-4);
        Assert.Equal(33L * 100 + 33 * 4, kernel.WeightBytes);
    }

    [Fact]
    public void Inputs_beyond_the_row_limit_or_not_float32_are_left_to_the_gemm_library()
    {
        using var scope = torch.NewDisposeScope();
        using var kernel = new CpuGemv(torch.randn([8, 16]), null, WeightStorage.Float32);
        Assert.True(kernel.Accepts(torch.zeros([CpuGemv.MaxRows, 16])));
        Assert.False(kernel.Accepts(torch.zeros([CpuGemv.MaxRows + 1, 16])));
        Assert.False(kernel.Accepts(torch.zeros([1, 16], ScalarType.BFloat16)));
        Assert.False(kernel.Accepts(torch.zeros([1, 15])));
        Assert.False(kernel.Accepts(torch.zeros([1, 16]).requires_grad_()));                // gradients flow through F.linear
    }
}
