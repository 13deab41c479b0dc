using SmoaServe.Engine.Checkpoints;
using SmoaServe.Engine.Model;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace SmoaServe.Engine.Tests;

/// <summary>The decode loops of <see cref="CpuDecode"/> against the libtorch operations they replace (HF's formulas).</summary>
public sealed class CpuDecodeTests
{
    private static double MaxAbs(Tensor a, Tensor b) => (a - b).abs().max().item<float>();

    [Fact]
    public void RmsNorm_and_silu_times_up_match_the_libtorch_formulas()
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var g = new torch.Generator(11);
        var x = torch.randn([3, 1, 77], generator: g) * 5;            // width not a multiple of 8
        var w = torch.randn([77], generator: g);
        var expected = w * (x * torch.rsqrt(x.pow(2).mean([-1L], keepdim: true) + 1e-5));
        Assert.True(MaxAbs(CpuDecode.RmsNorm(x, w, 1e-5), expected) <= 1e-5);

        var gu = torch.randn([2, 1, 2 * 45], generator: g) * 4;
        var reference = F.silu(gu.narrow(-1, 0, 45)) * gu.narrow(-1, 45, 45);
        var y = CpuDecode.SiluMul(gu);
        Assert.Equal(reference.shape, y.shape);
        Assert.True(MaxAbs(y, reference) <= 1e-5);
    }

    [Theory]
    [InlineData(4, 2, 16, 3, 40)]     // GQA, a few rows: attention on the calling thread
    [InlineData(12, 4, 64, 16, 300)]  // 16 rows at long positions: attention split over the CPU workers
    [InlineData(6, 6, 10, 2, 5)]      // no grouping, head size not a multiple of 8
    public void Attend_writes_rotated_keys_and_values_and_attends_over_each_rows_own_keys(int nh, int nkv, int d, int b, int maxPosition)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var g = new torch.Generator(12);
        int slots = b + 2, maxSeq = maxPosition + 4;
        var keys = torch.randn([slots, nkv, maxSeq, d], generator: g);
        var values = torch.randn([slots, nkv, maxSeq, d], generator: g);
        // entries no row may read: another slot full of NaN, and NaN after each row's position
        keys[slots - 1] = torch.full([nkv, maxSeq, d], float.NaN);
        var rng = new Random(3);
        var rows = Enumerable.Range(0, b).Select(i => new CpuDecode.RowPlace(b - 1 - i, rng.Next(maxPosition / 2, maxPosition))).ToArray();
        foreach (var r in rows) { keys[r.Slot, .., (r.Position + 1)..] = float.NaN; values[r.Slot, .., (r.Position + 1)..] = float.NaN; }
        var keysBefore = keys.clone();
        var valuesBefore = values.clone();

        var qkv = torch.randn([b, 1, (nh + 2L * nkv) * d], generator: g);
        var rotary = new RotaryEmbedding(new RopeConfig("default", 10000), d, torch.CPU);
        var positions = torch.tensor(rows.Select(r => (long)r.Position).ToArray()).view(b, 1);
        var (cos, sin) = rotary.CosSin(positions, ScalarType.Float32);                                   // [B, 1, D]

        var output = CpuDecode.Attend(qkv, cos, sin, CpuDecode.CacheLayer.Of(keys, values), rows, nh);
        Assert.Equal(new long[] { b, 1, (long)nh * d }, output.shape);

        for (int i = 0; i < b; i++)
        {
            var (slot, p) = rows[i];
            var heads = qkv[i].view(nh + 2 * nkv, 1, d);                                                    // [H, 1, D]
            var c = cos[i].unsqueeze(0);
            var s = sin[i].unsqueeze(0);
            var q = RotaryEmbedding.Apply(heads.narrow(0, 0, nh).unsqueeze(0), c, s)[0];                  // [NH, 1, D]
            var k = RotaryEmbedding.Apply(heads.narrow(0, nh, nkv).unsqueeze(0), c, s)[0];                // [NKV, 1, D]
            var v = heads.narrow(0, nh + nkv, nkv);
            Assert.True(MaxAbs(keys[slot, .., p], k.squeeze(1)) <= 1e-6, $"row {i}: key written");
            Assert.Equal(0, MaxAbs(values[slot, .., p], v.squeeze(1)));
            // HF eager attention: repeat_kv, q·kᵀ / √D, softmax in float32, times v, over keys 0..p of the row's slot
            var kAll = keys[slot, .., ..(p + 1)].repeat_interleave(nh / nkv, dim: 0);                      // [NH, p+1, D]
            var vAll = values[slot, .., ..(p + 1)].repeat_interleave(nh / nkv, dim: 0);
            var probs = (torch.matmul(q, kAll.transpose(1, 2)) / Math.Sqrt(d)).softmax(-1);                // [NH, 1, p+1]
            var expected = torch.matmul(probs, vAll).reshape(nh * d);
            Assert.True(MaxAbs(output[i, 0], expected) <= 1e-5, $"row {i}: max |Δ| {MaxAbs(output[i, 0], expected):E3}");
        }
        // nothing but [slot, :, position] of each row changed in the caches
        foreach (var r in rows)
        {
            keysBefore[r.Slot, .., r.Position] = keys[r.Slot, .., r.Position];
            valuesBefore[r.Slot, .., r.Position] = values[r.Slot, .., r.Position];
        }
        Assert.True(keys.isnan().eq(keysBefore.isnan()).all().item<bool>() && keys.nan_to_num().eq(keysBefore.nan_to_num()).all().item<bool>());
        Assert.True(values.isnan().eq(valuesBefore.isnan()).all().item<bool>() && values.nan_to_num().eq(valuesBefore.nan_to_num()).all().item<bool>());
        Assert.False(output.isnan().any().item<bool>());
    }

    [Fact]
    public void Rows_outside_the_cache_are_refused_before_anything_is_written()
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var keys = torch.zeros([2, 1, 8, 8]);
        var values = torch.zeros([2, 1, 8, 8]);
        var qkv = torch.ones([1, 1, 3 * 8]);
        var cs = torch.ones([1, 1, 8]);
        var cache = CpuDecode.CacheLayer.Of(keys, values);
        Assert.Throws<ArgumentOutOfRangeException>(() => CpuDecode.Attend(qkv, cs, cs, cache, [new CpuDecode.RowPlace(2, 0)], 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => CpuDecode.Attend(qkv, cs, cs, cache, [new CpuDecode.RowPlace(0, 8)], 1));
        Assert.Throws<ArgumentException>(() => CpuDecode.Attend(qkv, cs, cs, cache, [new CpuDecode.RowPlace(0, 1), new CpuDecode.RowPlace(1, 1)], 1));
        Assert.Throws<ArgumentException>(() => CpuDecode.CacheLayer.Of(keys, torch.zeros([2, 1, 8, 4])));
        Assert.Throws<ArgumentException>(() => CpuDecode.CacheLayer.Of(keys.transpose(2, 3), values));
        Assert.Equal(0, keys.abs().sum().item<float>());
    }
}
