using SmoaServe.Engine.Checkpoints;
using SmoaServe.Engine.Model;
using SmoaServe.Tests;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Training.Tests;

/// <summary>The llama-a fixture, shared model instances, tensor comparisons, temp folders.</summary>
internal static class TestSupport
{
    public static string LlamaA => FixturePaths.LlamaA;
    public static string ExpectedBase => Path.Combine(LlamaA, "expected_base.safetensors");

    /// <summary>llama-a in float32 on the CPU. Models are read-only for training (frozen), so tests may share one.</summary>
    public static LlamaModel Model => SharedModel.Value;
    private static readonly Lazy<LlamaModel> SharedModel = new(() => LlamaModel.Load(LlamaA));

    public static float[] Floats(Tensor t)
    {
        using var f = t.detach().to(ScalarType.Float32).cpu().contiguous();
        return f.data<float>().ToArray();
    }

    public static float[] ReadFloats(SafeTensorsFile file, string name)
    {
        using var t = file.ReadTensor(name, ScalarType.Float32);
        return t.data<float>().ToArray();
    }

    public static double MaxAbs(ReadOnlySpan<float> a)
    {
        double max = 0;
        foreach (float v in a) max = Math.Max(max, Math.Abs(v));
        return max;
    }

    public static double MaxAbsDiff(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        Assert.Equal(a.Length, b.Length);
        double max = 0;
        for (int i = 0; i < a.Length; i++) max = Math.Max(max, Math.Abs((double)a[i] - b[i]));
        return max;
    }

    /// <summary>A fresh folder under this test run's temp root, deleted when the test process exits.</summary>
    public static string TempDir()
    {
        string dir = Path.Combine(RunRoot.Value, Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        return dir;
    }

    private static readonly Lazy<string> RunRoot = new(() =>
    {
        string root = Path.Combine(Path.GetTempPath(), "smoa-training-tests", Guid.NewGuid().ToString("N"));
        AppDomain.CurrentDomain.ProcessExit += (_, _) => { try { Directory.Delete(root, recursive: true); } catch (IOException) { } };
        return root;
    });
}
