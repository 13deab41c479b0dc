using SmoaServe.Engine.Adapters.Smoa;
using SmoaServe.Engine.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Adapters;

/// <summary>
/// Random, non-zero adapters (deterministic for a seed) for benchmarks: A ~ N(0, 1/fan_in), B ~ N(0, 0.02²), so
/// every block really updates the base (a zero B, as at training step 0, would make nothing to measure).
/// </summary>
public static class SyntheticAdapters
{
    public static AdapterDefinition Create(BaseModelView model, AdapterConfig config, int seed)
    {
        var gen = new Generator((ulong)seed + 1);
        var modules = new Dictionary<(int, Projection), ModuleFactors>();
        using var _ = no_grad();
        for (int layer = 0; layer < model.LayerCount; layer++)
            foreach (var p in config.TargetModules)
            {
                var (m, n) = model.Shape(layer, p);
                if (config.Kind == AdapterKind.Lora)
                {
                    modules[(layer, p)] = new ModuleFactors([Random(config.R, n, 1.0 / Math.Sqrt(n), gen)], [Random(m, config.R, 0.02, gen)], null);
                    continue;
                }
                var rowSizes = SmoaLayout.SplitSizes(m, config.NumBlocks);
                var colSizes = SmoaLayout.SplitSizes(n, config.NumBlocks);
                var a = new Tensor?[config.NumBlocks];
                var b = new Tensor?[config.NumBlocks];
                for (int k = 0; k < config.NumBlocks; k++)
                {
                    if (config.BlockRanks[k] == 0) continue;
                    a[k] = Random(config.BlockRanks[k], colSizes[k], 1.0 / Math.Sqrt(colSizes[k]), gen);   // [r_k, |C_k|]
                    b[k] = Random(rowSizes[k], config.BlockRanks[k], 0.02, gen);                           // [|R_k|, r_k]
                }
                modules[(layer, p)] = new ModuleFactors(a, b, null);
            }
        return new AdapterDefinition(config, modules);
    }

    private static Tensor Random(long rows, long cols, double std, Generator gen) =>
        (randn([rows, cols], dtype: ScalarType.Float32, generator: gen) * std).DetachFromDisposeScope();
}
