using SmoaServe.Engine.Checkpoints;
using SmoaServe.Engine.Model;
using SmoaServe.Tests;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Tests;

/// <summary>Shared helpers: the llama-a fixture, its expected values, tensor comparisons, temp folders.</summary>
public static class TestTensors
{
    public static string LlamaA => FixturePaths.LlamaA;
    public static string ExpectedBase => Path.Combine(LlamaA, "expected_base.safetensors");

    public static long[] ReadIds(SafeTensorsFile file, string name)
    {
        using var t = file.ReadTensor(name);
        return t.data<long>().ToArray();
    }

    public static float[] ReadFloats(SafeTensorsFile file, string name)
    {
        using var t = file.ReadTensor(name, ScalarType.Float32);
        return t.data<float>().ToArray();
    }

    public static float[] Logits(LlamaModel model, long[] ids)
    {
        using var scope = torch.NewDisposeScope();
        var input = torch.tensor(ids, dtype: ScalarType.Int64).view(1, ids.Length);
        return model.Forward(input).to_type(ScalarType.Float32).data<float>().ToArray();
    }

    public static double MaxAbsDiff(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        Assert.Equal(a.Length, b.Length);
        double max = 0;
        for (int i = 0; i < a.Length; i++) max = Math.Max(max, Math.Abs((double)a[i] - b[i]));
        return max;
    }

    public static int ArgMax(ReadOnlySpan<float> x)
    {
        int best = 0;
        for (int i = 1; i < x.Length; i++) if (x[i] > x[best]) best = i;
        return best;
    }

    /// <summary>A fresh folder under this test run's temp root, which is deleted when the test process exits.</summary>
    public static string TempDir()
    {
        string dir = Path.Combine(RunRoot.Value, Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        return dir;
    }

    private static readonly Lazy<string> RunRoot = new(() =>
    {
        string root = Path.Combine(Path.GetTempPath(), "smoa-engine-tests", Guid.NewGuid().ToString("N"));
        AppDomain.CurrentDomain.ProcessExit += (_, _) => { try { Directory.Delete(root, recursive: true); } catch (IOException) { } };
        return root;
    });

    /// <summary>Copies the fixture's non-weight files (config, tokenizer, ...) into <paramref name="dir"/>.</summary>
    public static void CopyFixtureFilesExceptWeights(string dir)
    {
        foreach (var f in Directory.GetFiles(LlamaA))
        {
            string name = Path.GetFileName(f);
            if (name.EndsWith(".safetensors", StringComparison.Ordinal)) continue;
            File.Copy(f, Path.Combine(dir, name));
        }
    }
}
