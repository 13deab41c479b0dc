using System.Text.Json;
using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Adapters.Smoa;
using SmoaServe.Engine.Model;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace SmoaServe.Training.Adapters;

/// <summary>How a trainable SMoA module computes ΔW x (same values, different cost).</summary>
public enum SmoaTrainingForm
{
    /// <summary>Folded for K = 1, blockwise otherwise.</summary>
    Auto,
    /// <summary><see cref="SmoaMath.AddBlockwiseDelta"/>: each block (B_k A_k) ⊙ M_k formed and applied to the permuted
    /// activations — N·m·n/K multiply-adds per forward, plus gathers / scatters of the activations.</summary>
    Blockwise,
    /// <summary><see cref="SmoaMath.FoldFactors"/> + <see cref="SmoaMath.FoldedDenseDelta"/>: ΔW = (B' A') ⊙ W formed
    /// densely and applied with one GEMM — N·m·n multiply-adds, no permutation of activations.</summary>
    Folded,
}

/// <summary>
/// An SMoA (any K; K = 1 is HiRA) or LoRA / rsLoRA adapter whose factors are trainable leaves (float32, on the model's
/// device) over a frozen <see cref="LlamaModel"/>. Its hook adds each targeted projection's ΔW x to the forward with
/// autograd, reusing the serving math (<see cref="SmoaMath.AddBlockwiseDelta"/> against the shared-anchor blocks of
/// <see cref="SmoaAnchors"/>), so the model's forward is the serving forward.
/// SMoA factors are kept zero-padded per module — A [K, rpad, Cmax], Bᵀ [K, rpad, Rmax] — the same padded form the
/// serving banks use. The padding always receives a zero gradient (it only meets zero-padded anchors), so it stays zero
/// under AdamW and the padded training is the per-block training exactly.
/// </summary>
public sealed class TrainableAdapter : ITrainable
{
    private readonly List<Module> _modules;
    private readonly Dictionary<(int Layer, ProjectionGroup Group), Module[]> _byGroup;

    public AdapterConfig Config { get; }
    public IReadOnlyList<TrainableTensor> Parameters { get; }

    /// <summary>How SMoA's ΔW x is computed in training (the result is the same; the cost differs). Default: folded for
    /// K = 1 (HiRA: the block is the whole matrix, so permuting activations buys nothing), blockwise otherwise.</summary>
    public SmoaTrainingForm Form { get; set; } = SmoaTrainingForm.Auto;

    private TrainableAdapter(AdapterConfig config, List<Module> modules)
    {
        Config = config;
        _modules = modules;
        _byGroup = modules.GroupBy(m => (m.Layer, m.Group)).ToDictionary(g => g.Key, g => g.ToArray());
        Parameters = modules.SelectMany(m => m.Leaves()).ToList();
    }

    /// <summary>
    /// A new adapter initialised as PEFT / cpeft do: every A (per block) Kaiming-uniform with a = √5, i.e.
    /// U(-1/√fan_in, 1/√fan_in) with fan_in its columns, and every B zero, so ΔW = 0 at step 0. Deterministic for a seed:
    /// the values are drawn on the CPU module by module (layer, then projection order), block by block.
    /// </summary>
    /// <param name="layouts">SMoA layouts (SVD of the base weights); null: a store over the model without a disk cache</param>
    public static TrainableAdapter Create(LlamaModel model, AdapterConfig config, ulong seed, LayoutStore? layouts = null)
    {
        CheckTargets(model, config);
        if (config.Kind == AdapterKind.Smoa) layouts ??= new LayoutStore(BaseModelView.From(model));
        var generator = new Generator(seed);
        var modules = new Dictionary<(int, Projection), ModuleFactors>();
        try
        {
            for (int layer = 0; layer < model.Config.NumLayers; layer++)
                foreach (var p in config.TargetModules.Order())
                {
                    var (m, n) = Shape(model, layer, p);
                    if (config.Kind == AdapterKind.Lora)
                    {
                        modules[(layer, p)] = new ModuleFactors([KaimingUniform(config.R, n, generator)], [zeros(m, config.R)], null);
                        continue;
                    }
                    var layout = layouts!.Get(layer, p, config.NumBlocks);
                    var a = new Tensor?[config.NumBlocks];
                    var b = new Tensor?[config.NumBlocks];
                    for (int k = 0; k < config.NumBlocks; k++)
                    {
                        int rk = config.BlockRanks[k];
                        if (rk == 0) continue;
                        a[k] = KaimingUniform(rk, layout.Cols[k].Length, generator);   // [r_k, |C_k|]
                        b[k] = zeros(layout.Rows[k].Length, rk);                        // [|R_k|, r_k]
                    }
                    modules[(layer, p)] = new ModuleFactors(a, b, layout);
                }
            return FromDefinition(model, new AdapterDefinition(config, modules), layouts);
        }
        finally
        {
            foreach (var f in modules.Values) foreach (var t in f.A.Concat(f.B)) t?.Dispose();   // FromDefinition copied them
        }
    }

    /// <summary>
    /// Trainable copies of a validated adapter's factors (the definition is not kept). SMoA modules use the layout the
    /// adapter carries, else the one from <paramref name="layouts"/> (the SVD of the base weights).
    /// </summary>
    public static TrainableAdapter FromDefinition(LlamaModel model, AdapterDefinition definition, LayoutStore? layouts = null)
    {
        var config = definition.Config;
        CheckTargets(model, config);
        if (config.Kind == AdapterKind.Smoa) layouts ??= new LayoutStore(BaseModelView.From(model));
        var modules = new List<Module>();
        try
        {
            foreach (var ((layer, p), f) in definition.Modules.OrderBy(e => e.Key))
            {
                var (group, part) = ProjectionGroups.Of(p);
                long offset = ProjectionGroups.Parts(group).Take(part).Sum(q => (long)Shape(model, layer, q).Out);
                var (m, n) = Shape(model, layer, p);
                modules.Add(config.Kind == AdapterKind.Lora
                    ? Module.Lora(layer, p, offset, m, n, f, model.Device)
                    : Module.Smoa(layer, p, offset, m, n, f, f.CarriedLayout ?? layouts!.Get(layer, p, config.NumBlocks), config, model));
            }
        }
        catch
        {
            foreach (var m in modules) m.Dispose();
            throw;
        }
        return new TrainableAdapter(config, modules);
    }

    public IAdapterBatch CreateHook() => new Hook(this);

    /// <summary>
    /// The adapter as it is now, as an <see cref="AdapterDefinition"/> of float32 CPU copies (SMoA modules carry their
    /// layout, so it is written with its smoa_rows / smoa_cols tensors). The caller disposes it.
    /// </summary>
    public AdapterDefinition ToDefinition()
    {
        using var noGrad = no_grad();
        var modules = new Dictionary<(int, Projection), ModuleFactors>();
        foreach (var m in _modules)
        {
            var (a, b) = m.Blocks(leaf => leaf);
            modules[(m.Layer, m.Projection)] = new ModuleFactors(
                a.Select(t => t?.to(ScalarType.Float32).cpu().clone().DetachFromDisposeScope()).ToArray(),
                b.Select(t => t?.to(ScalarType.Float32).cpu().contiguous().clone().DetachFromDisposeScope()).ToArray(),
                m.Layout);
        }
        return new AdapterDefinition(Config, modules);
    }

    /// <summary>
    /// Each factor under its adapter_model.safetensors key (lora_A / lora_B, per block for SMoA), as views of the
    /// parameters or, with <paramref name="gradients"/>, of their gradients (null where there is none yet).
    /// The views go into the caller's dispose scope.
    /// </summary>
    public IEnumerable<(string Key, Tensor? Value)> Factors(bool gradients = false)
    {
        foreach (var m in _modules)
        {
            string prefix = $"base_model.model.model.layers.{m.Layer}.{ProjectionNames.ModulePath(m.Projection)}.";
            var (a, b) = m.Blocks(leaf => gradients ? leaf.grad : leaf);
            if (Config.Kind == AdapterKind.Lora)
            {
                yield return (prefix + "lora_A.weight", a[0]);
                yield return (prefix + "lora_B.weight", b[0]);
                continue;
            }
            for (int k = 0; k < a.Length; k++)
            {
                if (Config.BlockRanks[k] == 0) continue;
                yield return (prefix + $"lora_A.{k}.weight", a[k]);
                yield return (prefix + $"lora_B.{k}.weight", b[k]);
            }
        }
    }

    public string Describe() => JsonSerializer.Serialize(new
    {
        kind = Config.Kind.ToString().ToLowerInvariant(),
        r = Config.R,
        num_blocks = Config.NumBlocks,
        block_ranks = Config.BlockRanks,
        lora_alpha = Config.LoraAlpha,
        use_rslora = Config.UseRslora,
        target_modules = Config.TargetModules.Select(ProjectionNames.ModuleName).ToArray(),
        parameters = Parameters.Select(p => $"{p.Name} [{string.Join(",", p.Value.shape)}]").ToArray(),
        layouts = _modules.Where(m => m.Layout is not null).Select(m => m.Layout!.Hash).ToArray(),
    });

    public long ParameterCount => _modules.Sum(m => m.ParameterCount);

    public void Dispose()
    {
        foreach (var m in _modules) m.Dispose();
        _modules.Clear();
    }

    private static (int Out, int In) Shape(LlamaModel model, int layer, Projection p)
    {
        var w = model.ProjectionWeight(layer, p);
        return ((int)w.shape[0], (int)w.shape[1]);
    }

    private static void CheckTargets(LlamaModel model, AdapterConfig config)
    {
        if (config.TargetModules.Count == 0) throw new ArgumentException("an adapter needs at least one target module");
        if (config.Kind == AdapterKind.Smoa)
            foreach (var p in config.TargetModules)
            {
                var (m, n) = Shape(model, 0, p);
                SmoaLayout.CheckBlockCount(m, n, config.NumBlocks, ProjectionNames.ModuleName(p));
            }
    }

    /// <summary>nn.init.kaiming_uniform_(w, a=√5) of an nn.Linear(fan_in → rows) weight: U(-1/√fan_in, 1/√fan_in).</summary>
    private static Tensor KaimingUniform(long rows, long fanIn, Generator generator)
    {
        double bound = 1.0 / Math.Sqrt(fanIn);
        return empty(rows, fanIn, dtype: ScalarType.Float32).uniform_(-bound, bound, generator);
    }

    /// <summary>One targeted projection: its trainable factors and where its output sits in the group's fused GEMM output.</summary>
    private sealed class Module : IDisposable
    {
        public required int Layer { get; init; }
        public required Projection Projection { get; init; }
        public ProjectionGroup Group => ProjectionGroups.Of(Projection).Group;
        /// <summary>First column of this projection's output in its group's output.</summary>
        public required long PartOffset { get; init; }
        public required int Out { get; init; }
        public required int In { get; init; }
        public required string Name { get; init; }

        // LoRA: A [r, in], B [out, r]
        public Tensor? A { get; private init; }
        public Tensor? B { get; private init; }

        // SMoA: A_k zero-padded [K, rpad, Cmax], B_kᵀ zero-padded [K, rpad, Rmax] (unscaled), the frozen anchors M_kᵀ
        public SmoaLayout? Layout { get; private init; }
        /// <summary>The frozen blocks M_kᵀ for the blockwise form, copied from W when first needed.</summary>
        public SmoaAnchors Anchors
        {
            get
            {
                if (_anchors is null)
                {
                    using var scope = NewDisposeScope();
                    _anchors = new SmoaAnchors(Layout!, Weight!);
                }
                return _anchors;
            }
        }
        private SmoaAnchors? _anchors;
        /// <summary>W of this projection (owned by the model), for the folded form.</summary>
        public Tensor? Weight { get; private init; }
        public Tensor? APad { get; private init; }
        public Tensor? BtPad { get; private init; }
        public IReadOnlyList<int> BlockRanks { get; private init; } = [];

        public long ParameterCount => A is not null
            ? A.NumberOfElements + B!.NumberOfElements
            : Enumerable.Range(0, Layout!.K).Sum(k => (long)BlockRanks[k] * (Layout.Rows[k].Length + Layout.Cols[k].Length));

        public static Module Lora(int layer, Projection p, long offset, int m, int n, ModuleFactors f, Device device)
        {
            using var noGrad = no_grad();
            return new Module
            {
                Layer = layer, Projection = p, PartOffset = offset, Out = m, In = n,
                Name = $"layers.{layer}.{ProjectionNames.ModuleName(p)}",
                A = Leaf(f.A[0]!.to(ScalarType.Float32, device, copy: true)),
                B = Leaf(f.B[0]!.to(ScalarType.Float32, device, copy: true)),
            };
        }

        public static Module Smoa(int layer, Projection p, long offset, int m, int n, ModuleFactors f, SmoaLayout layout, AdapterConfig config, LlamaModel model)
        {
            if (layout.OutFeatures != m || layout.InFeatures != n || layout.K != config.NumBlocks)
                throw new ArgumentException($"layer {layer} {ProjectionNames.ModuleName(p)}: the layout is for another shape or block count");
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            int k = layout.K;
            int rpad = Math.Max(1, config.BlockRanks.Max());
            int cmax = layout.Cols.Max(c => c.Length), rmax = layout.Rows.Max(r => r.Length);
            var aPad = zeros([k, rpad, cmax], ScalarType.Float32, model.Device);
            var btPad = zeros([k, rpad, rmax], ScalarType.Float32, model.Device);
            for (int blk = 0; blk < k; blk++)
            {
                if (f.A[blk] is not { } a || f.B[blk] is not { } b) continue;
                aPad[blk].narrow(0, 0, a.shape[0]).narrow(1, 0, a.shape[1]).copy_(a);
                btPad[blk].narrow(0, 0, b.shape[1]).narrow(1, 0, b.shape[0]).copy_(b.t());
            }
            return new Module
            {
                Layer = layer, Projection = p, PartOffset = offset, Out = m, In = n,
                Name = $"layers.{layer}.{ProjectionNames.ModuleName(p)}",
                Layout = layout, BlockRanks = config.BlockRanks, Weight = model.ProjectionWeight(layer, p),
                APad = Leaf(aPad.DetachFromDisposeScope()), BtPad = Leaf(btPad.DetachFromDisposeScope()),
            };
        }

        private static Tensor Leaf(Tensor t) => t.DetachFromDisposeScope().requires_grad_(true);

        public IEnumerable<TrainableTensor> Leaves() => A is not null
            ? [new(Name + ".lora_A", A), new(Name + ".lora_B", B!)]
            : [new(Name + ".smoa_A", APad!), new(Name + ".smoa_Bt", BtPad!)];

        /// <summary>Per block A_k [r_k, |C_k|] and B_k [|R_k|, r_k] as views of <paramref name="select"/>(leaf) (null where r_k = 0).</summary>
        public (Tensor?[] A, Tensor?[] B) Blocks(Func<Tensor, Tensor?> select)
        {
            if (A is not null) return ([select(A)], [select(B!)]);
            var a = select(APad!);
            var bt = select(BtPad!);
            int k = Layout!.K;
            var aBlocks = new Tensor?[k];
            var bBlocks = new Tensor?[k];
            for (int blk = 0; blk < k; blk++)
            {
                int rk = BlockRanks[blk];
                if (rk == 0 || a is null || bt is null) continue;
                aBlocks[blk] = a[blk].narrow(0, 0, rk).narrow(1, 0, Layout.Cols[blk].Length);       // [r_k, |C_k|]
                bBlocks[blk] = bt[blk].narrow(0, 0, rk).narrow(1, 0, Layout.Rows[blk].Length).t();  // [|R_k|, r_k]
            }
            return (aBlocks, bBlocks);
        }

        /// <summary>y[..., this part] += ΔW x with autograd into the factors. x [B, T, in], y [B, T, Σout] of the group.</summary>
        public void AddDelta(Tensor x, Tensor y, double scale, SmoaTrainingForm form)
        {
            var part = y.narrow(-1, PartOffset, Out);                                             // [B, T, out]: a view of y
            var dtype = x.dtype;
            if (A is not null)
            {
                var delta = F.linear(F.linear(x, A.to(dtype)), (B! * scale).to(dtype));           // scale · B (A x): [B, T, out]
                part.add_(delta);
                return;
            }
            long rows = x.shape[0] * x.shape[1];
            if (form == SmoaTrainingForm.Folded || form == SmoaTrainingForm.Auto && Layout!.K == 1)
            {
                var (blocksA, blocksB) = Blocks(leaf => leaf.to(dtype));
                var (foldedA, foldedBt) = SmoaMath.FoldFactors(Layout!, blocksA, blocksB, scale);              // A' [r, in], scale·B'ᵀ [r, out]
                var folded = SmoaMath.FoldedDenseDelta(x.reshape(1, rows, In), foldedA.unsqueeze(0), foldedBt.unsqueeze(0), Weight!);   // [1, N, out]
                part.add_(folded.view(part.shape));
                return;
            }
            var a = APad!.to(dtype).unsqueeze(1);                                                  // [K, 1, rpad, Cmax]
            var bt = (BtPad! * scale).to(dtype).unsqueeze(1);                                      // [K, 1, rpad, Rmax]
            // every row uses this one adapter: the batch's tokens are one row of the blockwise form
            SmoaMath.AddBlockwiseDelta(x.reshape(1, rows, In), part.view(1, rows, Out), Anchors.AnchorsT, a, bt, Anchors.ColIndex, Anchors.RowIndex);
        }

        public void Dispose()
        {
            A?.Dispose(); B?.Dispose(); APad?.Dispose(); BtPad?.Dispose(); _anchors?.Dispose();
        }
    }

    /// <summary>The forward's adapter hook: every targeted part of the group gets its ΔW x, differentiably.</summary>
    private sealed class Hook(TrainableAdapter adapter) : IAdapterBatch
    {
        public Tensor Apply(int layer, ProjectionGroup group, Tensor x, Tensor y)
        {
            if (!adapter._byGroup.TryGetValue((layer, group), out var modules)) return y;
            foreach (var m in modules) m.AddDelta(x, y, adapter.Config.Scaling, adapter.Form);
            return y;
        }
    }
}
