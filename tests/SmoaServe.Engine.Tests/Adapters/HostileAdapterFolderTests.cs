using System.Diagnostics;
using System.Text;
using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Checkpoints;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Tests;

/// <summary>
/// Adapter folders built to hurt the reader: FIFOs and devices under the expected names, links out of the folder,
/// huge or sparse files, overlapping or gapped tensor tables, absurd values. Each is refused quickly with an error
/// that names the file and never shows content from outside it; none is read whole.
/// </summary>
public class HostileAdapterFolderTests
{
    private const string Secret = "SECRET-7f3a";
    private static readonly BaseModelView View = WarmView();

    /// <summary>The base's view, with one adapter read through it first (so timings below measure the refusal, not start-up).</summary>
    private static BaseModelView WarmView()
    {
        var view = BaseModelView.From(TestModels.LlamaA);
        AdapterFiles.Read(TestModels.AdapterDir("lora-adapter"), view).Dispose();
        string broken = Folder(d => File.WriteAllText(Config(d), "{"));
        try { AdapterFiles.Read(broken, view).Dispose(); } catch (InvalidDataException) { }
        return view;
    }

    /// <summary>A copy of the fixture LoRA adapter that <paramref name="edit"/> then damages.</summary>
    private static string Folder(Action<string>? edit = null, string fixture = "lora-adapter")
    {
        string dir = TestModels.TempDir();
        foreach (var name in new[] { AdapterFiles.ConfigFile, AdapterFiles.WeightsFile })
            File.Copy(Path.Combine(TestModels.AdapterDir(fixture), name), Path.Combine(dir, name));
        edit?.Invoke(dir);
        return dir;
    }

    private static string Config(string dir) => Path.Combine(dir, AdapterFiles.ConfigFile);
    private static string Weights(string dir) => Path.Combine(dir, AdapterFiles.WeightsFile);

    private static void Replace(string path, Action<string> create)
    {
        File.Delete(path);
        create(path);
    }

    private static void MakeFifo(string path)
    {
        using var p = Process.Start(new ProcessStartInfo("mkfifo", [path]) { UseShellExecute = false })!;
        p.WaitForExit();
        Assert.Equal(0, p.ExitCode);
    }

    /// <summary>A safetensors file with this header text and <paramref name="dataBytes"/> zero bytes of data (sparse).</summary>
    private static void RawSafetensors(string path, string header, long dataBytes)
    {
        var h = Encoding.UTF8.GetBytes(header);
        using var fs = new FileStream(path, FileMode.Create);
        fs.Write(BitConverter.GetBytes((ulong)h.Length));
        fs.Write(h);
        fs.SetLength(8 + h.Length + dataBytes);
    }

    private const string LoraKey = "base_model.model.model.layers.0.self_attn.q_proj.";

    /// <summary>Reads the folder, expects a refusal within a second, returns the message.</summary>
    private static string Refused(string dir)
    {
        var clock = Stopwatch.StartNew();
        var e = Assert.ThrowsAny<Exception>(() => { using var _ = AdapterFiles.Read(dir, View); });
        clock.Stop();
        Assert.True(e is InvalidDataException or FileNotFoundException or DirectoryNotFoundException, $"{e.GetType().Name}: {e.Message}");
        Assert.DoesNotContain(Secret, e.Message);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(5), $"refusing took {clock.Elapsed.TotalMilliseconds:F0} ms: {e.Message}");
        return e.Message;
    }

    public static TheoryData<string> Cases() => new()
    {
        "config is a FIFO", "weights are a FIFO", "config links outside", "config links outside through ..", "config links to /dev/zero",
        "weights link to /dev/zero", "weights link to /dev/urandom", "config is a directory", "weights are a directory", "config is missing",
        "weights are missing", "config is a dangling link", "config is empty", "weights are empty", "config is not UTF-8",
        "config is 2 MB", "config is deep JSON", "config echoes control characters", "weights: 1 GB sparse, one unknown tensor",
        "weights: 5 GB sparse", "weights: overlapping data_offsets", "weights: a gap between tensors", "weights: trailing bytes",
        "weights: header longer than the file", "weights: header length 2^63", "weights: header is not JSON", "weights: deep header",
        "weights: tensor name of 100000 characters", "weights: control characters in a name", "weights: duplicate tensor",
        "weights: shape of a trillion elements", "weights: negative dimension", "weights: unknown dtype", "weights: lora_B filled with 3e38",
        "weights: NaN", "weights: layer 9999", "weights: 2^16+1 tensors",
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void A_hostile_folder_is_refused_quickly_without_leaking_outside_content(string @case)
    {
        string outside = Path.Combine(TestModels.TempDir(), "outside.json");
        File.WriteAllText(outside, $$"""{"peft_type": "{{Secret}}", "r": 4, "target_modules": ["q_proj"]}""");
        string dir = @case switch
        {
            "config is a FIFO" => Folder(d => Replace(Config(d), MakeFifo)),
            "weights are a FIFO" => Folder(d => Replace(Weights(d), MakeFifo)),
            "config links outside" => Folder(d => Replace(Config(d), p => File.CreateSymbolicLink(p, outside))),
            "config links outside through .." => Folder(d =>
            {
                File.Copy(outside, Path.Combine(Path.GetDirectoryName(d)!, "sibling.json"), overwrite: true);
                Replace(Config(d), p => File.CreateSymbolicLink(p, "../sibling.json"));
            }),
            "config links to /dev/zero" => Folder(d => Replace(Config(d), p => File.CreateSymbolicLink(p, "/dev/zero"))),
            "weights link to /dev/zero" => Folder(d => Replace(Weights(d), p => File.CreateSymbolicLink(p, "/dev/zero"))),
            "weights link to /dev/urandom" => Folder(d => Replace(Weights(d), p => File.CreateSymbolicLink(p, "/dev/urandom"))),
            "config is a directory" => Folder(d => Replace(Config(d), p => Directory.CreateDirectory(p))),
            "weights are a directory" => Folder(d => Replace(Weights(d), p => Directory.CreateDirectory(p))),
            "config is missing" => Folder(d => File.Delete(Config(d))),
            "weights are missing" => Folder(d => File.Delete(Weights(d))),
            "config is a dangling link" => Folder(d => Replace(Config(d), p => File.CreateSymbolicLink(p, Path.Combine(d, "nowhere.json")))),
            "config is empty" => Folder(d => File.WriteAllBytes(Config(d), [])),
            "weights are empty" => Folder(d => File.WriteAllBytes(Weights(d), [])),
            "config is not UTF-8" => Folder(d => File.WriteAllBytes(Config(d), [0x7b, 0xff, 0xfe, 0x7d])),
            "config is 2 MB" => Folder(d => { using var fs = File.OpenWrite(Config(d)); fs.SetLength(2 << 20); }),
            "config is deep JSON" => Folder(d => File.WriteAllText(Config(d), new string('[', 100_000))),
            "config echoes control characters" => Folder(d => File.WriteAllText(Config(d),
                """{"peft_type": "LORA\n[12:00:00 ERR] forged log line", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "bias": "x\u001b[31mred"}""")),
            "weights: 1 GB sparse, one unknown tensor" => Folder(d => RawSafetensors(Weights(d),
                """{"model.secret.weight": {"dtype": "F32", "shape": [268435455], "data_offsets": [0, 1073741820]}}""", 1073741820)),
            "weights: 5 GB sparse" => Folder(d => RawSafetensors(Weights(d),
                """{"x": {"dtype": "U8", "shape": [5368709120], "data_offsets": [0, 5368709120]}}""", 5368709120)),
            "weights: overlapping data_offsets" => Folder(d => RawSafetensors(Weights(d),
                $$$"""{"{{{LoraKey}}}lora_A.weight": {"dtype": "F32", "shape": [4, 64], "data_offsets": [0, 1024]}, "{{{LoraKey}}}lora_B.weight": {"dtype": "F32", "shape": [64, 4], "data_offsets": [0, 1024]}}""", 1024)),
            "weights: a gap between tensors" => Folder(d => RawSafetensors(Weights(d),
                $$$"""{"{{{LoraKey}}}lora_A.weight": {"dtype": "F32", "shape": [4, 64], "data_offsets": [0, 1024]}, "{{{LoraKey}}}lora_B.weight": {"dtype": "F32", "shape": [64, 4], "data_offsets": [2048, 3072]}}""", 3072)),
            "weights: trailing bytes" => Folder(d => RawSafetensors(Weights(d),
                $$$"""{"{{{LoraKey}}}lora_A.weight": {"dtype": "F32", "shape": [4, 64], "data_offsets": [0, 1024]}}""", 1 << 20)),
            "weights: header longer than the file" => Folder(d => File.WriteAllBytes(Weights(d), [.. BitConverter.GetBytes(1000UL), .. "{}"u8])),
            "weights: header length 2^63" => Folder(d => File.WriteAllBytes(Weights(d), [.. BitConverter.GetBytes(1UL << 63), .. "{}"u8])),
            "weights: header is not JSON" => Folder(d => RawSafetensors(Weights(d), Secret + " is not json", 0)),
            "weights: deep header" => Folder(d => RawSafetensors(Weights(d), new string('{', 50_000), 0)),
            "weights: tensor name of 100000 characters" => Folder(d => RawSafetensors(Weights(d),
                $$$"""{"{{{new string('a', 100_000)}}}": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}""", 1)),
            "weights: control characters in a name" => Folder(d => RawSafetensors(Weights(d),
                """{"bad\nname\u001b[2J": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}""", 1)),
            "weights: duplicate tensor" => Folder(d => RawSafetensors(Weights(d),
                """{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}""", 2)),
            "weights: shape of a trillion elements" => Folder(d => RawSafetensors(Weights(d),
                $$$"""{"{{{LoraKey}}}lora_A.weight": {"dtype": "F32", "shape": [1000000, 1000000], "data_offsets": [0, 1024]}}""", 1024)),
            "weights: negative dimension" => Folder(d => RawSafetensors(Weights(d),
                $$$"""{"{{{LoraKey}}}lora_A.weight": {"dtype": "F32", "shape": [-4, 64], "data_offsets": [0, 1024]}}""", 1024)),
            "weights: unknown dtype" => Folder(d => RawSafetensors(Weights(d),
                $$$"""{"{{{LoraKey}}}lora_A.weight": {"dtype": "F128", "shape": [4, 64], "data_offsets": [0, 1024]}}""", 1024)),
            "weights: lora_B filled with 3e38" => Folder(d => EditWeights(d, "base_model.model.model.layers.0.mlp.gate_proj.lora_B.weight", t => t.fill_(3e38f))),
            "weights: NaN" => Folder(d => EditWeights(d, LoraKey + "lora_A.weight", t => t[0, 0] = float.NaN)),
            "weights: layer 9999" => Folder(d => RawSafetensors(Weights(d),
                """{"base_model.model.model.layers.9999.self_attn.q_proj.lora_A.weight": {"dtype": "F32", "shape": [4, 64], "data_offsets": [0, 1024]}}""", 1024)),
            "weights: 2^16+1 tensors" => Folder(d => RawSafetensors(Weights(d),
                "{" + string.Join(",", Enumerable.Range(0, (1 << 16) + 1).Select(i => $"\"t{i}\": {{\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [{i}, {i + 1}]}}")) + "}",
                (1 << 16) + 1)),
            _ => throw new ArgumentException(@case),
        };
        long before = Process.GetCurrentProcess().WorkingSet64;
        string message = Refused(dir);
        long grown = Process.GetCurrentProcess().WorkingSet64 - before;
        Assert.True(grown < 256L << 20, $"{@case}: the working set grew by {grown >> 20} MB ({message})");
        Assert.DoesNotContain("forged log line", message);
        Assert.False(message.Any(char.IsControl), $"{@case}: control characters in the message");
        Assert.True(message.Length < 1000, $"{@case}: a {message.Length}-character message");
    }

    private static void EditWeights(string dir, string key, Action<Tensor> edit)
    {
        Dictionary<string, Tensor> tensors;
        using (var file = SafeTensorsFile.Open(Weights(dir)))
            tensors = file.Names.ToDictionary(n => n, n => file.ReadTensor(n));
        edit(tensors[key]);
        SafeTensorsWriter.Write(Weights(dir), tensors.Select(kv => (kv.Key, kv.Value)));
        foreach (var t in tensors.Values) t.Dispose();
    }

    [Fact]
    public void The_3e38_adapter_is_refused_by_the_update_bound_naming_the_module()
    {
        string dir = Folder(d => EditWeights(d, "base_model.model.model.layers.0.mlp.gate_proj.lora_B.weight", t => t.fill_(3e38f)));
        string message = Refused(dir);
        Assert.Contains("layer 0 gate_proj", message);
        Assert.Contains("times the weight it modifies", message);
    }

    [Fact]
    public void Links_inside_the_folder_are_followed_and_the_fixtures_load()
    {
        string dir = Folder(d =>
        {
            File.Move(Config(d), Path.Combine(d, "real-config.json"));
            File.CreateSymbolicLink(Config(d), "real-config.json");
        });
        using var adapter = AdapterFiles.Read(dir, View);
        Assert.Equal(AdapterKind.Lora, adapter.Config.Kind);
        foreach (var fixture in TestModels.FixtureAdapters)
        {
            using var a = AdapterFiles.Read(TestModels.AdapterDir(fixture), View);
            foreach (var ((layer, proj), f) in a.Modules)
                Assert.InRange(AdapterBounds.RelativeUpdate(a.Config, f, () => View.WeightNorm(layer, proj)), 0.01, 10);
        }
    }

    /// <summary>The bound measures what it claims: for LoRA ρ = ‖s·B A‖_F / ‖W‖_F exactly, for SMoA an upper bound of it.</summary>
    [Fact]
    public void The_relative_update_matches_the_dense_update()
    {
        foreach (var fixture in TestModels.FixtureAdapters)
        {
            using var a = AdapterFiles.Read(TestModels.AdapterDir(fixture), View);
            foreach (var ((layer, proj), f) in a.Modules)
            {
                using var scope = NewDisposeScope();
                var w = View.LayoutWeight(layer, proj).to(ScalarType.Float64);
                var delta = a.Config.Kind == AdapterKind.Lora
                    ? f.B[0]!.to(ScalarType.Float64).matmul(f.A[0]!.to(ScalarType.Float64)) * a.Config.Scaling
                    : Adapters.Smoa.SmoaMath.DenseDelta(w, f.CarriedLayout ?? Adapters.Smoa.SmoaLayout.Compute(w, a.Config.NumBlocks), f.A, f.B, a.Config.Scaling).to(ScalarType.Float64);
                double exact = delta.norm().item<double>() / w.norm().item<double>();
                double rho = AdapterBounds.RelativeUpdate(a.Config, f, () => View.WeightNorm(layer, proj));
                if (a.Config.Kind == AdapterKind.Lora) Assert.Equal(exact, rho, 1e-6 * exact);
                else Assert.True(rho >= exact * (1 - 1e-6), $"{fixture} {layer} {proj}: bound {rho} below the exact {exact}");
            }
        }
    }
}
