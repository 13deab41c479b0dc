using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Adapters.Smoa;
using SmoaServe.Engine.Model;
using SmoaServe.Engine.Checkpoints;

namespace SmoaServe.Engine.Tests;

public class LayoutCacheTests
{
    [Fact]
    public void LayoutsAreComputedOnceAndReusedFromDisk()
    {
        var model = TestModels.LlamaA;
        var view = BaseModelView.From(model);
        string data = TestModels.TempDir();
        string adapter = TestModels.AdapterDir("smoa-adapter");   // v, o, gate, down; K = 2; no stored layout
        var (ids, expected) = TestModels.Expected(Path.Combine(adapter, "expected_logits.safetensors"))[1];

        var first = new LayoutStore(view, data);
        using (var registry = new AdapterRegistry(view, first))
        {
            registry.Load("a", adapter);
            registry.Load("b", adapter);                    // second adapter, same K: no new SVD, shared anchors
            Assert.Equal(2 * 4, first.SvdCount);            // 2 layers × 4 modules
            Assert.Equal(0, first.DiskHits);
        }
        Assert.Equal(8, Directory.GetFiles(first.CacheDirectory!, "*.safetensors").Length);

        var second = new LayoutStore(view, data);           // e.g. after a restart
        using (var registry = new AdapterRegistry(view, second))
        {
            registry.Load("a", adapter);
            Assert.Equal(0, second.SvdCount);
            Assert.Equal(8, second.DiskHits);
            using var logits = TestModels.Score(model, ids, registry.CreateBatch(["a"]));
            Assert.True(TestModels.MaxAbsDiff(logits, expected) <= TestModels.AdapterTolerance);
        }
        Directory.Delete(data, true);
    }

    [Fact]
    public void StoredLayoutSkipsTheSvd()
    {
        var view = BaseModelView.From(TestModels.LlamaA);
        using var registry = new AdapterRegistry(view);
        var info = registry.Load("l", TestModels.AdapterDir("smoa-adapter-layout"));
        Assert.True(info.CarriedLayout);
        Assert.Equal(0, registry.Layouts.SvdCount);
    }

    [Fact]
    public void DamagedCacheFileIsRecomputed()
    {
        var view = BaseModelView.From(TestModels.LlamaA);
        string data = TestModels.TempDir();
        var first = new LayoutStore(view, data);
        var layout = first.Get(0, Projection.Up, 3);
        string file = Directory.GetFiles(first.CacheDirectory!).Single();
        File.WriteAllBytes(file, [1, 2, 3]);
        var second = new LayoutStore(view, data);
        Assert.True(second.Get(0, Projection.Up, 3).SameAs(layout));
        Assert.Equal(1, second.SvdCount);
        Directory.Delete(data, true);
    }

    [Fact]
    public void FingerprintDependsOnTheWeights()
    {
        var model = TestModels.LlamaA;
        var inMemory = new BaseModelView(model.Config.NumLayers, model.ProjectionWeight, BaseModelView.IdentityOf(model.Config));
        var scaled = new BaseModelView(model.Config.NumLayers, (l, p) => model.ProjectionWeight(l, p) * 1.001f, inMemory.Identity);
        Assert.NotEqual(inMemory.Fingerprint, scaled.Fingerprint);
        Assert.Equal(inMemory.Fingerprint, new BaseModelView(model.Config.NumLayers, model.ProjectionWeight, inMemory.Identity).Fingerprint);
    }

    [Fact]
    public void CheckpointModelsShareLayoutsWhateverTheComputeDtype()
    {
        // A bf16 model loaded from the float32 checkpoint takes its layouts (and cache key) from the checkpoint, so
        // they equal the float32 model's, and `smoa merge` (which reads the files) uses the same cache folder.
        using var bf16 = LlamaModel.Load(SmoaServe.Tests.FixturePaths.LlamaA, new ModelLoadOptions(TorchSharp.torch.CPU, TorchSharp.torch.ScalarType.BFloat16));
        var f32View = BaseModelView.From(TestModels.LlamaA);
        var bf16View = BaseModelView.From(bf16);
        Assert.Equal(f32View.Fingerprint, bf16View.Fingerprint);
        using (var files = SmoaServe.Engine.Checkpoints.CheckpointFiles.Open(SmoaServe.Tests.FixturePaths.LlamaA))
            Assert.Equal(f32View.Fingerprint, BaseModelView.From(files, TestModels.LlamaA.Config).Fingerprint);
        Assert.True(new LayoutStore(bf16View).Get(1, Projection.Down, 2).SameAs(new LayoutStore(f32View).Get(1, Projection.Down, 2)));
    }

    [Fact]
    public void ComputedLayoutMatchesTheStoredReferenceLayout()
    {
        // smoa-adapter-layout stores the reference implementation's layout; the SVD here must reproduce it.
        var view = BaseModelView.From(TestModels.LlamaA);
        using var stored = AdapterFiles.Read(TestModels.AdapterDir("smoa-adapter-layout"), view);
        var layouts = new LayoutStore(view);
        foreach (var ((layer, p), f) in stored.Modules)
            Assert.True(layouts.Get(layer, p, 3).SameAs(f.CarriedLayout!), $"layer {layer} {p}");
    }
}

public class AdapterWriteTests
{
    [Fact]
    public void WrittenSmoaAdapterCarriesItsLayout()
    {
        var model = TestModels.LlamaA;
        var view = BaseModelView.From(model);
        var layouts = new LayoutStore(view);
        string dir = TestModels.TempDir();
        using (var read = AdapterFiles.Read(TestModels.AdapterDir("smoa-adapter"), view))
            AdapterFiles.Write(dir, read, (l, p) => layouts.Get(l, p, read.Config.NumBlocks));

        using var registry = new AdapterRegistry(view);
        var info = registry.Load("w", dir);
        Assert.True(info.CarriedLayout);
        Assert.Equal(0, registry.Layouts.SvdCount);
        foreach (var (ids, expected) in TestModels.Expected(Path.Combine(TestModels.AdapterDir("smoa-adapter"), "expected_logits.safetensors")))
        {
            using var logits = TestModels.Score(model, ids, registry.CreateBatch(["w"]));
            Assert.True(TestModels.MaxAbsDiff(logits, expected) <= TestModels.AdapterTolerance);
        }
        Directory.Delete(dir, true);
    }
}
