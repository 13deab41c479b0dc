using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Checkpoints;
using SmoaServe.Engine.Model;
using SmoaServe.Tests;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Tests;

/// <summary>The fixture model and helpers shared by the adapter tests (the fixture model is loaded once, read-only).</summary>
public static class TestModels
{
    public const double AdapterTolerance = 2e-3;

    public static readonly string[] FixtureAdapters = ["smoa-adapter", "smoa-adapter-layout", "lora-adapter"];

    private static readonly Lazy<LlamaModel> Fixture = new(() => LlamaModel.Load(FixturePaths.LlamaA));

    /// <summary>llama-a in float32 on the CPU; shared, never modified (tests that change weights load their own).</summary>
    public static LlamaModel LlamaA => Fixture.Value;

    public static string AdapterDir(string name) => Path.Combine(FixturePaths.LlamaA, name);

    /// <summary>(ids [T], logits [T, vocab]) pairs of an expected_*.safetensors file.</summary>
    public static List<(long[] Ids, Tensor Logits)> Expected(string path)
    {
        using var file = SafeTensorsFile.Open(path);
        var result = new List<(long[], Tensor)>();
        for (int i = 0; file.Contains($"ids_{i}"); i++)
        {
            using var ids = file.ReadTensor($"ids_{i}");
            result.Add((ids.data<long>().ToArray(), file.ReadTensor($"logits_{i}", ScalarType.Float32)));
        }
        return result;
    }

    /// <summary>logits [T, vocab] of one sequence with the given adapter batch (null: base).</summary>
    public static Tensor Score(LlamaModel model, long[] ids, IAdapterBatch? adapters)
    {
        using var input = tensor(ids, dtype: ScalarType.Int64).unsqueeze(0);
        using var logits = model.Forward(input, adapters);
        return logits[0].to(ScalarType.Float32).cpu();
    }

    public static double MaxAbsDiff(Tensor a, Tensor b)
    {
        using var d = (a.to(ScalarType.Float32) - b.to(ScalarType.Float32)).abs().max();
        return d.item<float>();
    }

    public static string TempDir() => TestTensors.TempDir();
}
