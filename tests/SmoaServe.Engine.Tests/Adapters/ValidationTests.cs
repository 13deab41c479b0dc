using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Checkpoints;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Tests;

/// <summary>Bad adapter files are rejected with an error naming the tensor, and leave the registry exactly as it was.</summary>
public class ValidationTests
{
    private const string Prefix = "base_model.model.model.layers.0.";

    /// <summary>Copies a fixture adapter to a temp dir, letting <paramref name="edit"/> change its tensors (name → tensor).</summary>
    private static string EditedCopy(string fixture, Action<Dictionary<string, Tensor>> edit, string? config = null)
    {
        string dir = TestModels.TempDir();
        string src = TestModels.AdapterDir(fixture);
        File.WriteAllText(Path.Combine(dir, AdapterFiles.ConfigFile), config ?? File.ReadAllText(Path.Combine(src, AdapterFiles.ConfigFile)));
        using var file = SafeTensorsFile.Open(Path.Combine(src, AdapterFiles.WeightsFile));
        var tensors = file.Names.ToDictionary(n => n, n => file.ReadTensor(n));
        edit(tensors);
        SafeTensorsWriter.Write(Path.Combine(dir, AdapterFiles.WeightsFile), tensors.Select(kv => (kv.Key, kv.Value)));
        foreach (var t in tensors.Values) t.Dispose();
        return dir;
    }

    /// <summary>Loads the bad adapter into a registry that already holds a good one; checks message and registry state.</summary>
    private static void AssertRejected(string dir, params string[] messageParts)
    {
        var model = TestModels.LlamaA;
        using var registry = new AdapterRegistry(BaseModelView.From(model));
        registry.Load("good", TestModels.AdapterDir("lora-adapter"));
        var before = registry.List();
        var (ids, expected) = TestModels.Expected(Path.Combine(TestModels.AdapterDir("lora-adapter"), "expected_logits.safetensors"))[0];

        var e = Assert.ThrowsAny<Exception>(() => registry.Load("bad", dir));
        Assert.True(e is InvalidDataException or InvalidOperationException, e.GetType().Name + ": " + e.Message);
        foreach (var part in messageParts) Assert.Contains(part, e.Message);

        Assert.False(registry.Contains("bad"));
        Assert.Equal(before, registry.List());
        Assert.Throws<InvalidOperationException>(() => registry.CreateBatch(["bad"]));
        using var logits = TestModels.Score(model, ids, registry.CreateBatch(["good"]));
        Assert.True(TestModels.MaxAbsDiff(logits, expected) <= TestModels.AdapterTolerance);
        // the same name loads fine afterwards with a good adapter
        registry.Load("bad", TestModels.AdapterDir("smoa-adapter-layout"));
        Assert.True(registry.Contains("bad"));
        Directory.Delete(dir, true);
    }

    [Fact]
    public void WrongShapeIsRejected()
    {
        string key = Prefix + "self_attn.v_proj.lora_B.1.weight";
        AssertRejected(EditedCopy("smoa-adapter", t => { t[key].Dispose(); t[key] = zeros(17, 4); }), key, "[17, 4]", "[16, 4]");
    }

    [Fact]
    public void UnknownModuleIsRejected()
    {
        string key = Prefix + "self_attn.x_proj.lora_A.weight";
        AssertRejected(EditedCopy("lora-adapter", t => t[key] = zeros(4, 64)), key, "x_proj");
    }

    [Fact]
    public void ModuleOutsideTargetModulesIsRejected()
    {
        string key = Prefix + "self_attn.k_proj.lora_A.weight";
        AssertRejected(EditedCopy("lora-adapter", t => t[key] = zeros(4, 64)), key, "target_modules");
    }

    [Fact]
    public void LayerBeyondTheBaseIsRejected()
    {
        string key = "base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight";
        AssertRejected(EditedCopy("lora-adapter", t => t[key] = zeros(4, 64)), key, "layer 7");
    }

    [Fact]
    public void NaNIsRejected()
    {
        string key = Prefix + "mlp.gate_proj.lora_A.weight";
        AssertRejected(EditedCopy("lora-adapter", t => t[key][1, 3] = float.NaN), key, "NaN");
    }

    [Fact]
    public void MissingFactorIsRejected()
    {
        string key = Prefix + "mlp.down_proj.lora_B.0.weight";
        AssertRejected(EditedCopy("smoa-adapter", t => { t[key].Dispose(); t.Remove(key); }), key, "missing");
    }

    [Fact]
    public void IntegerFactorIsRejected()
    {
        string key = Prefix + "self_attn.q_proj.lora_A.weight";
        AssertRejected(EditedCopy("lora-adapter", t => { var old = t[key]; t[key] = old.to(ScalarType.Int32); old.Dispose(); }), key, "dtype");
    }

    [Fact]
    public void LayoutIndexOutOfRangeIsRejected()
    {
        string key = Prefix + "self_attn.q_proj.smoa_rows.1";
        AssertRejected(EditedCopy("smoa-adapter-layout", t => t[key][0] = 64L), "smoa_rows.1", "index 64");
    }

    [Fact]
    public void LayoutThatIsNoPermutationIsRejected()
    {
        string key = Prefix + "mlp.up_proj.smoa_cols.2";
        AssertRejected(EditedCopy("smoa-adapter-layout", t =>
        {
            long first = t[Prefix + "mlp.up_proj.smoa_cols.0"][0].item<long>();
            t[key][5] = first;   // an index already used by block 0
        }), "smoa_cols.2", "permutation");
    }

    [Fact]
    public void PartialLayoutIsRejected()
    {
        string key = Prefix + "self_attn.k_proj.smoa_cols.2";
        AssertRejected(EditedCopy("smoa-adapter-layout", t => { t[key].Dispose(); t.Remove(key); }), key, "missing");
    }

    [Fact]
    public void BadConfigsAreRejected()
    {
        AssertRejected(EditedCopy("smoa-adapter", _ => { }, """{"peft_type": "SMOA", "r": 8, "num_blocks": 2, "branch_ranks": [5, 4], "lora_alpha": 16, "target_modules": ["v_proj", "o_proj", "gate_proj", "down_proj"]}"""), "branch_ranks", "sum to r");
        AssertRejected(EditedCopy("smoa-adapter", _ => { }, """{"peft_type": "SMOA", "r": 8, "num_blocks": 100000, "lora_alpha": 16, "target_modules": ["v_proj"]}"""), "num_blocks");
        // 64 blocks padded to rank 8 each would cost 512 ranks of device memory for an r = 8 adapter
        AssertRejected(EditedCopy("smoa-adapter", _ => { }, "{\"peft_type\": \"SMOA\", \"r\": 8, \"num_blocks\": 64, \"branch_ranks\": [8" + string.Concat(Enumerable.Repeat(", 0", 63)) + "], \"lora_alpha\": 16, \"target_modules\": [\"v_proj\"]}"), "too uneven");
        AssertRejected(EditedCopy("lora-adapter", _ => { }, """{"peft_type": "LORA", "r": 100000000, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj", "gate_proj"]}"""), "r = 100000000");
        AssertRejected(EditedCopy("lora-adapter", _ => { }, """{"peft_type": "IA3", "target_modules": ["q_proj"]}"""), "IA3");
        AssertRejected(EditedCopy("lora-adapter", _ => { }, """{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "gate_proj"], "use_dora": true}"""), "use_dora");
        AssertRejected(EditedCopy("lora-adapter", _ => { }, "{not json"), "JSON");
    }

    [Fact]
    public void SmoaFactorsForAnEmptyBlockAreRejected()
    {
        // branch_ranks [8, 0]: block 1 has no parameters, so its tensors in the file are an error
        AssertRejected(EditedCopy("smoa-adapter", _ => { }, """{"peft_type": "SMOA", "r": 8, "num_blocks": 2, "branch_ranks": [8, 0], "lora_alpha": 16, "target_modules": ["v_proj", "o_proj", "gate_proj", "down_proj"]}"""), "rank 0");
    }

    [Fact]
    public void DuplicateNameIsRejected()
    {
        using var registry = new AdapterRegistry(BaseModelView.From(TestModels.LlamaA));
        registry.Load("x", TestModels.AdapterDir("lora-adapter"));
        var e = Assert.Throws<InvalidOperationException>(() => registry.Load("x", TestModels.AdapterDir("smoa-adapter")));
        Assert.Contains("already loaded", e.Message);
        Assert.Equal(AdapterKind.Lora, registry.Get("x")!.Kind);
        // ids are the catalog's keys (its name rule is tested with the catalog); the registry refuses only unusable ones
        Assert.Throws<ArgumentException>(() => registry.Load("", TestModels.AdapterDir("lora-adapter")));
        Assert.Throws<ArgumentException>(() => registry.Load("bad\nid", TestModels.AdapterDir("lora-adapter")));
        Assert.Throws<ArgumentException>(() => registry.Load(new string('a', AdapterRegistry.MaxIdLength + 1), TestModels.AdapterDir("lora-adapter")));
    }
}
