using SmoaServe.Engine.Checkpoints;
using SmoaServe.Engine.Model;
using TorchSharp;
using static TorchSharp.torch;
using static SmoaServe.Tests.TestTensors;

namespace SmoaServe.Engine.Tests;

public sealed class ModelConfigTests
{
    private const string Base = """
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
        "rms_norm_eps": 1e-05, "max_position_embeddings": 131072, "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009], "tie_word_embeddings": false
        """;

    [Fact]
    public void Fixture_config_uses_rope_parameters()
    {
        var c = ModelConfig.Load(LlamaA);
        Assert.Equal((64, 176, 2, 4, 2, 16, 1024), (c.HiddenSize, c.IntermediateSize, c.NumLayers, c.NumHeads, c.NumKvHeads, c.HeadDim, c.VocabSize));
        Assert.Equal(new RopeConfig("default", 10000.0), c.Rope);
        Assert.Equal(1e-5, c.RmsNormEps);
        Assert.False(c.TieWordEmbeddings);
        Assert.Equal(1019, c.BosTokenId);
        Assert.Equal([1023], c.EosTokenIds);
        Assert.Equal([1023], GenerationConfig.Load(LlamaA, c).EosTokenIds);
    }

    [Fact]
    public void Old_top_level_rope_form_and_new_rope_parameters_form_agree()
    {
        var old = ModelConfig.Parse("{" + Base + """
            , "rope_theta": 500000.0, "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192, "rope_type": "llama3"} }
            """);
        var @new = ModelConfig.Parse("{" + Base + """
            , "rope_parameters": {"rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192, "rope_type": "llama3"} }
            """);
        Assert.Equal(new RopeConfig("llama3", 500000.0, 8.0, 1.0, 4.0, 8192), old.Rope);
        Assert.Equal(old.Rope, @new.Rope);
        Assert.Equal(128, old.HeadDim); // default hidden / heads
        Assert.Equal(4, old.KvGroups);
        Assert.Equal([128001, 128008, 128009], old.EosTokenIds);
    }

    [Fact]
    public void Linear_scaling_and_legacy_type_key_parse()
    {
        var c = ModelConfig.Parse("{" + Base + """, "rope_theta": 10000, "rope_scaling": {"type": "linear", "factor": 2.0}, "head_dim": 64, "attention_bias": true }""");
        Assert.Equal(new RopeConfig("linear", 10000, 2.0), c.Rope);
        Assert.Equal(64, c.HeadDim);
        Assert.True(c.AttentionBias);
        using var inv = RotaryEmbedding.ComputeInvFreq(c.Rope, 64);
        var f = inv.data<float>().ToArray();
        for (int i = 0; i < 32; i++) Assert.Equal(1.0 / Math.Pow(10000, 2.0 * i / 64) / 2.0, f[i], 1e-6 * f[i] + 1e-12);
    }

    [Theory]
    [InlineData("""{"model_type": "mistral", "hidden_size": 8}""", "model_type 'mistral'")]
    [InlineData("""{"architectures": ["GPT2LMHeadModel"], "hidden_size": 8}""", "GPT2LMHeadModel")]
    [InlineData("""{"hidden_size": 8}""", "Llama")]
    public void Unknown_architectures_are_clear_errors(string json, string expected)
    {
        var e = Assert.Throws<NotSupportedException>(() => ModelConfig.Parse(json, "x/config.json"));
        Assert.Contains(expected, e.Message);
        Assert.Contains("x/config.json", e.Message);
    }

    [Fact]
    public void Unknown_rope_type_and_bad_values_are_clear_errors()
    {
        Assert.Contains("yarn", Assert.Throws<NotSupportedException>(() =>
            ModelConfig.Parse("{" + Base + """, "rope_scaling": {"rope_type": "yarn", "factor": 4.0} }""")).Message);
        Assert.Contains("num_key_value_heads", Assert.Throws<InvalidDataException>(() =>
            ModelConfig.Parse("{" + Base.Replace("\"num_key_value_heads\": 8", "\"num_key_value_heads\": 5") + "}")).Message);
        Assert.Contains("head_dim", Assert.Throws<InvalidDataException>(() => // 65537 * 65536 wraps to 65536 in int
            ModelConfig.Parse("{" + Base.Replace("\"num_attention_heads\": 32, \"num_key_value_heads\": 8", "\"num_attention_heads\": 65537, \"num_key_value_heads\": 65537") + ", \"head_dim\": 65536 }")).Message);
        Assert.Contains("hidden_size", Assert.Throws<InvalidDataException>(() =>
            ModelConfig.Parse("{" + Base.Replace("\"hidden_size\": 4096", "\"hidden_size\": \"big\"") + "}")).Message);
    }

    /// <summary>Llama 3.1 frequencies from the published formula, computed here in double precision.</summary>
    [Fact]
    public void Llama3_rope_scaling_frequencies_follow_the_formula()
    {
        var rope = new RopeConfig("llama3", 500000.0, Factor: 8.0, LowFreqFactor: 1.0, HighFreqFactor: 4.0, OriginalMaxPositionEmbeddings: 8192);
        const int dim = 128;
        using var inv = RotaryEmbedding.ComputeInvFreq(rope, dim);
        var actual = inv.data<float>().ToArray();
        Assert.Equal(dim / 2, actual.Length);
        int low = 0, mid = 0, high = 0;
        for (int i = 0; i < dim / 2; i++)
        {
            double freq = 1.0 / Math.Pow(500000.0, 2.0 * i / dim);
            double wavelen = 2 * Math.PI / freq;
            double lowWavelen = 8192 / 1.0, highWavelen = 8192 / 4.0;
            double expected;
            if (wavelen < highWavelen) { expected = freq; high++; }
            else if (wavelen > lowWavelen) { expected = freq / 8.0; low++; }
            else
            {
                double smooth = (8192 / wavelen - 1.0) / (4.0 - 1.0);
                expected = (1 - smooth) * freq / 8.0 + smooth * freq;
                mid++;
            }
            Assert.True(Math.Abs(actual[i] - expected) <= 1e-5 * expected, $"i={i}: {actual[i]} vs {expected}");
        }
        Assert.True(low > 0 && mid > 0 && high > 0, $"all three regimes exercised ({low}/{mid}/{high})");
    }

    /// <summary>cos/sin at positions far beyond original_max_position_embeddings: float32 angle, as HF computes it.</summary>
    [Fact]
    public void Rotary_cos_sin_at_large_positions_use_float32_angles()
    {
        var rope = new RopeConfig("llama3", 500000.0, 8.0, 1.0, 4.0, 8192);
        var rotary = new RotaryEmbedding(rope, 64, torch.CPU);
        using var scope = torch.NewDisposeScope();
        var positions = torch.tensor(new long[] { 0, 9000, 20000, 100000 }).view(1, 4);
        var (cos, sin) = rotary.CosSin(positions, ScalarType.Float32);
        Assert.Equal(new long[] { 1, 4, 64 }, cos.shape);
        var inv = rotary.InvFreq.data<float>().ToArray();
        var c = cos.data<float>().ToArray();
        var s = sin.data<float>().ToArray();
        long[] pos = [0, 9000, 20000, 100000];
        for (int t = 0; t < 4; t++)
            for (int j = 0; j < 64; j++)
            {
                float angle = pos[t] * inv[j % 32]; // one float32 rounding, like HF's float32 matmul
                Assert.Equal(Math.Cos(angle), c[t * 64 + j], 1e-5);
                Assert.Equal(Math.Sin(angle), s[t * 64 + j], 1e-5);
            }
    }
}
