using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Adapters.Smoa;
using SmoaServe.Engine.Model;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Tests;

/// <summary>Random, non-zero adapters built in memory for tests (float32 CPU factors).</summary>
public static class RandomAdapters
{
    /// <param name="layoutOf">a stored layout per (layer, module), or null to let the registry compute it</param>
    public static AdapterDefinition Smoa(BaseModelView model, AdapterConfig config, int seed, Func<int, Projection, SmoaLayout>? layoutOf = null, double std = 0.2)
    {
        var gen = new Generator((ulong)seed);
        var modules = new Dictionary<(int, Projection), ModuleFactors>();
        for (int layer = 0; layer < model.LayerCount; layer++)
            foreach (var p in config.TargetModules)
            {
                var (m, n) = model.Shape(layer, p);
                var rowSizes = SmoaLayout.SplitSizes(m, config.NumBlocks);
                var colSizes = SmoaLayout.SplitSizes(n, config.NumBlocks);
                var a = new Tensor?[config.NumBlocks];
                var b = new Tensor?[config.NumBlocks];
                for (int k = 0; k < config.NumBlocks; k++)
                {
                    int rk = config.BlockRanks[k];
                    if (rk == 0) continue;
                    a[k] = (randn([rk, colSizes[k]], generator: gen) * std).DetachFromDisposeScope();
                    b[k] = (randn([rowSizes[k], rk], generator: gen) * std).DetachFromDisposeScope();
                }
                modules[(layer, p)] = new ModuleFactors(a, b, layoutOf?.Invoke(layer, p));
            }
        return new AdapterDefinition(config, modules);
    }

    public static AdapterDefinition Lora(BaseModelView model, AdapterConfig config, int seed, double std = 0.1)
    {
        var gen = new Generator((ulong)seed);
        var modules = new Dictionary<(int, Projection), ModuleFactors>();
        for (int layer = 0; layer < model.LayerCount; layer++)
            foreach (var p in config.TargetModules)
            {
                var (m, n) = model.Shape(layer, p);
                modules[(layer, p)] = new ModuleFactors(
                    [(randn([config.R, n], generator: gen) * std).DetachFromDisposeScope()],
                    [(randn([m, config.R], generator: gen) * std).DetachFromDisposeScope()], null);
            }
        return new AdapterDefinition(config, modules);
    }

    /// <summary>A random layout (random permutations split like tensor_split): exercises the stored-layout path.</summary>
    public static SmoaLayout RandomLayout(int m, int n, int k, int seed)
    {
        var rng = new Random(seed);
        long[][] Split(int total)
        {
            var perm = Enumerable.Range(0, total).Select(i => (long)i).OrderBy(_ => rng.Next()).ToArray();
            var sizes = SmoaLayout.SplitSizes(total, k);
            var groups = new long[k][];
            for (int g = 0, start = 0; g < k; start += sizes[g], g++) groups[g] = perm[start..(start + sizes[g])];
            return groups;
        }
        return SmoaLayout.FromIndices(m, n, Split(m), Split(n), "random layout");
    }
}
