using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Adapters.Smoa;

namespace SmoaServe.Engine.Tests;

/// <summary>
/// Registering an adapter in two phases: <see cref="AdapterRegistry.Prepare"/> (any thread: checks, SVD layouts, folded
/// factors; no device work) and the install's steps and commit (model thread: one module or projection group of device
/// copies per step). Nothing is visible before the commit, a dropped install leaves nothing behind, and the result is the
/// same adapter as a one-call load (reference logits).
/// </summary>
public class AdapterInstallTests
{
    [Theory]
    [InlineData(SmoaForm.Anchored)]
    [InlineData(SmoaForm.Folded)]
    public async Task Prepare_does_the_layouts_off_thread_and_the_steps_do_the_device_copies(SmoaForm form)
    {
        var view = BaseModelView.From(TestModels.LlamaA);
        var layouts = new LayoutStore(view);
        using var registry = new AdapterRegistry(view, layouts, new AdapterRegistryOptions { SmoaForm = form });
        using var definition = AdapterFiles.Read(TestModels.AdapterDir("smoa-adapter"), view);

        int preparingThread = -1;
        using var install = await Task.Run(() => { preparingThread = Environment.CurrentManagedThreadId; return registry.Prepare("smoa", definition); });
        Assert.NotEqual(Environment.CurrentManagedThreadId, preparingThread);
        Assert.Equal(definition.Modules.Count, layouts.SvdCount);               // every layout computed while preparing
        Assert.Equal(0, registry.AnchorBytes);                                   // ... and nothing placed on the device
        Assert.False(registry.Contains("smoa"));
        // smoa-adapter: v, o, gate, down in 2 layers = 8 modules in 8 distinct projection groups
        Assert.Equal(8, install.StepCount);

        int steps = 1;
        while (install.Step())
        {
            steps++;
            Assert.False(registry.Contains("smoa"));
            if (form == SmoaForm.Anchored) Assert.True(registry.AnchorBytes > 0);
        }
        Assert.Equal(install.StepCount, steps);
        var info = install.Commit();
        Assert.True(registry.Contains("smoa"));
        Assert.True(info.Bytes > 0);

        var (ids, expected) = TestModels.Expected(Path.Combine(TestModels.AdapterDir("smoa-adapter"), "expected_logits.safetensors"))[1];
        using var logits = TestModels.Score(TestModels.LlamaA, ids, registry.CreateBatch(["smoa"]));
        Assert.True(TestModels.MaxAbsDiff(logits, expected) <= TestModels.AdapterTolerance);
    }

    [Fact]
    public void A_dropped_install_leaves_the_serving_version_and_no_slot_behind()
    {
        var view = BaseModelView.From(TestModels.LlamaA);
        using var registry = new AdapterRegistry(view);
        registry.Load("x", TestModels.AdapterDir("lora-adapter"));
        var before = registry.Get("x");
        using var other = AdapterFiles.Read(TestModels.AdapterDir("smoa-adapter-layout"), view);

        using (var install = registry.Prepare("x", other, replace: true))
        {
            install.Step();
            Assert.Equal(before, registry.Get("x"));                            // the old version serves until the commit
        }                                                                       // dropped: nothing changes
        Assert.Equal(before, registry.Get("x"));
        Assert.Single(registry.List());

        var (ids, expected) = TestModels.Expected(Path.Combine(TestModels.AdapterDir("lora-adapter"), "expected_logits.safetensors"))[0];
        using (var logits = TestModels.Score(TestModels.LlamaA, ids, registry.CreateBatch(["x"])))
            Assert.True(TestModels.MaxAbsDiff(logits, expected) <= TestModels.AdapterTolerance);

        // committed: the new version replaces the old one atomically
        using (var install = registry.Prepare("x", other, replace: true)) install.Commit();
        Assert.Equal(AdapterKind.Smoa, registry.Get("x")!.Kind);
        Assert.Throws<InvalidOperationException>(() => registry.Prepare("x", other));
    }
}
