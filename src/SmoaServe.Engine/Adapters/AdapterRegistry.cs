using SmoaServe.Engine.Adapters.Smoa;
using SmoaServe.Engine.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Adapters;

/// <summary>What the registry knows about one loaded adapter (no tensors).</summary>
public sealed record AdapterInfo(
    string Name,
    AdapterKind Kind,
    int R,
    int NumBlocks,
    IReadOnlyList<int> BlockRanks,
    double Scaling,
    IReadOnlyList<string> TargetModules,
    int ModuleCount,
    long ParameterCount,
    /// <summary>Device bytes of its factor slots (padded to the bank's shape, compute dtype).</summary>
    long Bytes,
    bool CarriedLayout);

/// <summary>How SMoA adapters are kept and applied (docs/smoa-spec.md, "Serving").</summary>
public enum SmoaForm
{
    /// <summary>Block factors per (layer, module) against shared anchors M_k = W[R_k, C_k]: the fewest multiply-adds
    /// (r/K² of the base per row), several small operations per module. The default on the CPU.</summary>
    Anchored,
    /// <summary>Folded HiRA factors per (layer, projection group) against the model's own fused weights: no anchor copies,
    /// five operations per group and decode step, K² times the anchored form's multiply-adds. The default on CUDA,
    /// where decode is bound by operation launches rather than arithmetic.</summary>
    Folded,
}

/// <summary>Settings of an <see cref="AdapterRegistry"/>; <see cref="For"/> gives the defaults of a device.</summary>
public sealed record AdapterRegistryOptions
{
    public SmoaForm SmoaForm { get; init; } = SmoaForm.Anchored;
    /// <summary>Per cached batch plan, device bytes it may keep of its rows' gathered factors (reused by every decode step).</summary>
    public long PlanCacheBytes { get; init; } = 64L << 20;
    /// <summary>Folded SMoA prefill: elements of the transient per-row ΔWᵀ formed at once (rows are processed in chunks).</summary>
    public long FoldedPrefillMaxElements { get; init; } = 1L << 27;

    public static AdapterRegistryOptions For(Device device, SmoaForm? form = null) => device.type == DeviceType.CUDA
        ? new() { SmoaForm = form ?? SmoaForm.Folded, PlanCacheBytes = 2L << 30 }
        : new() { SmoaForm = form ?? SmoaForm.Anchored };

    /// <summary>"anchored" / "folded" / null or empty (the device's default).</summary>
    public static SmoaForm? ParseForm(string? value) => value?.ToLowerInvariant() switch
    {
        null or "" => null,
        "anchored" => SmoaForm.Anchored,
        "folded" => SmoaForm.Folded,
        _ => throw new ArgumentException($"SMoA form '{value}' is not 'anchored' or 'folded'"),
    };
}

/// <summary>
/// The loaded adapters of one base model, and the <see cref="IAdapterSource"/> the model runner batches from.
/// Each adapter's factors live in shared banks (one slot per adapter): LoRA and folded SMoA per (layer, projection
/// group), anchored SMoA per (layer, module) with its anchors M_k = W[R_k, C_k] kept once per layout. A batch mixing any
/// adapters costs one gather and a few batched operations per group and bank; base-only batches cost nothing.
/// Threading: <see cref="Load"/>, <see cref="Add"/> and <see cref="CreateBatch"/> do tensor work and must run on the
/// model thread; <see cref="Remove"/>, <see cref="Contains"/>, <see cref="List"/> are safe from any thread.
/// </summary>
public sealed class AdapterRegistry : IAdapterSource, IDisposable
{
    public const int MaxIdLength = 256;
    private const int GroupCount = 4;
    private const int PlanCacheSize = 8;

    private readonly object _lock = new();
    private readonly Dictionary<string, Registered> _adapters = new(StringComparer.Ordinal);
    private readonly Dictionary<(int, Projection, string), SmoaAnchors> _anchors = new();
    private readonly Dictionary<(int, Projection, string, int), SmoaBank> _smoaBanks = new();
    private readonly Dictionary<(int, ProjectionGroup, GroupForm, string), GroupBank> _groupBanks = new();
    private readonly Dictionary<(int, ProjectionGroup), Tensor> _groupWeights = new();
    private readonly Dictionary<string, BatchPlan> _plans = new(StringComparer.Ordinal);
    private readonly Queue<string> _planOrder = new();
    private long _version;

    public AdapterRegistry(BaseModelView model, LayoutStore? layouts = null, AdapterRegistryOptions? options = null)
    {
        Model = model;
        Layouts = layouts ?? new LayoutStore(model);
        Options = options ?? AdapterRegistryOptions.For(model.Device);
    }

    public BaseModelView Model { get; }
    public AdapterRegistryOptions Options { get; }
    public LayoutStore Layouts { get; }

    /// <summary>Device bytes of all SMoA anchors (shared by every adapter with the same layout).</summary>
    public long AnchorBytes { get { lock (_lock) return _anchors.Values.Sum(a => a.Bytes); } }

    public int Count { get { lock (_lock) return _adapters.Count; } }

    public bool Contains(string adapterId) { lock (_lock) return _adapters.ContainsKey(adapterId); }

    public IReadOnlyList<AdapterInfo> List() { lock (_lock) return _adapters.Values.Select(a => a.Info).OrderBy(i => i.Name, StringComparer.Ordinal).ToList(); }

    public AdapterInfo? Get(string name) { lock (_lock) return _adapters.TryGetValue(name, out var a) ? a.Info : null; }

    /// <summary>
    /// Reads, validates (against the config and this base) and registers the adapter in <paramref name="directory"/>.
    /// Either the adapter is fully usable afterwards or an exception says why and nothing changed. Model thread.
    /// </summary>
    /// <param name="replace">an adapter already loaded under this name is replaced atomically (it keeps serving if the
    /// new one fails to load); otherwise that is an error</param>
    public AdapterInfo Load(string name, string directory, bool replace = false)
    {
        CheckName(name);
        using var definition = AdapterFiles.Read(directory, Model);
        return Add(name, definition, replace);
    }

    /// <summary>Registers an already validated adapter (its tensors are copied; the caller keeps ownership). Model thread.</summary>
    public AdapterInfo Add(string name, AdapterDefinition definition, bool replace = false)
    {
        using var install = Prepare(name, definition, replace);
        while (install.Step()) { }
        return install.Commit();
    }

    /// <summary>
    /// Everything of registering an adapter that does not touch the device, on the calling thread (any thread): the shape
    /// checks, the SMoA layouts (SVDs, or the stored ones), the factors in the compute dtype, folded for LoRA and folded
    /// SMoA. The result's <see cref="AdapterInstall.Step"/> then copies one module (anchored SMoA: with its anchors the
    /// first time a layout is used) or one projection group to the device per call, and <see cref="AdapterInstall.Commit"/>
    /// makes the adapter visible atomically, both on the model thread, so a load costs the model thread a few short
    /// slices between decode steps. The caller keeps the definition; the install owns its host copies.
    /// </summary>
    /// <param name="replace">an adapter already loaded under this name is replaced at commit (it keeps serving until
    /// then, and if anything fails); otherwise that is an error</param>
    public AdapterInstall Prepare(string name, AdapterDefinition definition, bool replace = false)
    {
        CheckName(name);
        lock (_lock)
            if (!replace && _adapters.ContainsKey(name)) throw new InvalidOperationException($"adapter '{name}' is already loaded; remove it first");
        CheckShapes(definition);
        var config = definition.Config;
        bool smoa = config.Kind == AdapterKind.Smoa;
        var targets = definition.Modules.OrderBy(e => e.Key)
            .Select(e => new Target(e.Key.Layer, e.Key.Projection, e.Value,
                smoa ? e.Value.CarriedLayout ?? Layouts.Get(e.Key.Layer, e.Key.Projection, config.NumBlocks) : null))
            .ToList();
        var units = new List<InstallUnit>();
        try
        {
            using var _ = no_grad();
            if (smoa && Options.SmoaForm == SmoaForm.Anchored)
                foreach (var t in targets) units.Add(AnchoredUnitOf(t, config));
            else
                foreach (var byGroup in targets.GroupBy(t => (t.Layer, ProjectionGroups.Of(t.Projection).Group)))
                    units.Add(GroupedUnitOf(byGroup.Key.Layer, byGroup.Key.Group, byGroup.ToList(), config));
        }
        catch
        {
            foreach (var u in units) u.Dispose();
            throw;
        }
        return new AdapterInstall(this, name, replace, definition, units);
    }
    /// <summary>Unregisters an adapter; its slots are reused by later loads. Any thread. False when it was not loaded.</summary>
    public bool Remove(string name)
    {
        lock (_lock)
        {
            if (!_adapters.Remove(name, out var registered)) return false;
            foreach (var p in registered.Placements) p.Bank.ReleaseSlot(p.Slot);
            _version++;
            return true;
        }
    }

    public IAdapterBatch? CreateBatch(IReadOnlyList<string?> rowAdapterIds)
    {
        if (rowAdapterIds.All(id => id is null)) return null;
        lock (_lock)
        {
            string key = _version + "\n" + string.Join("\n", rowAdapterIds.Select(id => id ?? ""));
            if (_plans.TryGetValue(key, out var plan)) plan.Uses++;
            else
            {
                var rows = rowAdapterIds.Select(id => id is null ? null
                    : _adapters.TryGetValue(id, out var a) ? a : throw new InvalidOperationException($"adapter '{id}' is not loaded")).ToList();
                plan = BuildPlan(rows);
                _plans[key] = plan;
                _planOrder.Enqueue(key);
                // Evicted plans are only dropped, not disposed: a batch still holding one keeps it alive (GC frees it).
                while (_planOrder.Count > PlanCacheSize)
                    if (_plans.Remove(_planOrder.Dequeue(), out var evicted)) evicted.DropCachedFactors();
            }
            return new AdapterBatch(plan);
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            foreach (var b in _smoaBanks.Values) b.Dispose();
            foreach (var b in _groupBanks.Values) b.Dispose();
            foreach (var a in _anchors.Values) a.Dispose();
            foreach (var w in _groupWeights.Values) w.Dispose();
            _smoaBanks.Clear(); _groupBanks.Clear(); _anchors.Clear(); _groupWeights.Clear(); _adapters.Clear(); _plans.Clear(); _planOrder.Clear();
        }
    }

    private SmoaAnchors AnchorsFor(int layer, Projection proj, SmoaLayout layout)
    {
        lock (_lock)
            if (_anchors.TryGetValue((layer, proj, layout.Hash), out var existing) && existing.Layout.SameAs(layout)) return existing;
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var anchors = new SmoaAnchors(layout, Model.Weight(layer, proj));
        lock (_lock) _anchors[(layer, proj, layout.Hash)] = anchors;
        return anchors;
    }

    /// <summary>Anchored SMoA, host side: the module's block factors in the compute dtype.</summary>
    private InstallUnit AnchoredUnitOf(Target t, AdapterConfig config) =>
        new AnchoredUnit(t.Layer, t.Projection, t.Layout!, OnHost(t.Factors.A), OnHost(t.Factors.B), Math.Max(1, config.BlockRanks.Max()));

    /// <summary>Anchored SMoA, device side: the anchors of the module's layout (copied the first time), then the block
    /// factors into the bank of those anchors and padded rank.</summary>
    private Placement PlaceAnchored(AnchoredUnit u, AdapterConfig config)
    {
        var anchors = AnchorsFor(u.Layer, u.Projection, u.Layout);
        SmoaBank bank;
        int slot;
        lock (_lock)
        {
            var key = (u.Layer, u.Projection, anchors.Layout.Hash, u.RankPad);
            if (!_smoaBanks.TryGetValue(key, out bank!)) _smoaBanks[key] = bank = new SmoaBank(anchors, u.RankPad, Model.DType, Model.Device);
            slot = bank.AllocateSlot();
        }
        try { bank.Write(slot, u.A, u.B, config.Scaling); }
        catch { lock (_lock) bank.ReleaseSlot(slot); throw; }
        var (group, part) = ProjectionGroups.Of(u.Projection);
        return new Placement(GroupIndex(u.Layer, group), part, bank, slot);
    }

    /// <summary>LoRA, or folded SMoA, host side: the targeted modules of one (layer, group) as folded factors A', scale·B'ᵀ
    /// in the compute dtype (the same operations the device would run, so the values are the same).</summary>
    private InstallUnit GroupedUnitOf(int layer, ProjectionGroup group, List<Target> targets, AdapterConfig config)
    {
        var parts = ProjectionGroups.Parts(group);
        var ranks = new int[parts.Count];
        var written = new List<(int Part, Tensor A, Tensor Bt)>();
        try
        {
            foreach (var t in targets)
            {
                using var scope = NewDisposeScope();
                int part = ProjectionGroups.Of(t.Projection).Part;
                Tensor?[] a = OnHost(t.Factors.A), b = OnHost(t.Factors.B);
                var (foldedA, foldedBt) = t.Layout is { } layout
                    ? SmoaMath.FoldFactors(layout, a, b, config.Scaling)           // [r, in], [r, out]
                    : (a[0]!, b[0]!.t() * config.Scaling);                        // LoRA: A [r, in], scale·Bᵀ [r, out]
                ranks[part] = (int)foldedA.shape[0];
                written.Add((part, foldedA.contiguous().DetachFromDisposeScope(), foldedBt.contiguous().DetachFromDisposeScope()));
            }
        }
        catch
        {
            foreach (var w in written) { w.A.Dispose(); w.Bt.Dispose(); }
            throw;
        }
        return new GroupedUnit(layer, group, ranks, written);
    }

    /// <summary>LoRA, or folded SMoA, device side: one slot of the (layer, group) bank of this rank signature.</summary>
    private Placement PlaceGrouped(GroupedUnit u, AdapterConfig config)
    {
        var parts = ProjectionGroups.Parts(u.Group);
        var outs = parts.Select(p => Model.Shape(u.Layer, p).Out).ToArray();
        int inFeatures = Model.Shape(u.Layer, parts[0]).In;
        var form = config.Kind == AdapterKind.Lora ? GroupForm.LowRank : GroupForm.Hadamard;
        GroupBank bank;
        int slot;
        lock (_lock)
        {
            var key = (u.Layer, u.Group, form, string.Join(",", u.Ranks));
            if (!_groupBanks.TryGetValue(key, out bank!))
                _groupBanks[key] = bank = new GroupBank(form, u.Ranks, inFeatures, outs,
                    form == GroupForm.Hadamard ? GroupWeightOf(u.Layer, u.Group) : null, Options.FoldedPrefillMaxElements, Model.DType, Model.Device);
            slot = bank.AllocateSlot();
        }
        try { bank.Write(slot, u.Parts); }
        catch { lock (_lock) bank.ReleaseSlot(slot); throw; }
        return new Placement(GroupIndex(u.Layer, u.Group), -1, bank, slot);
    }

    /// <summary>Factors in the compute dtype on the host, as copies the caller owns (outside any dispose scope).</summary>
    private Tensor?[] OnHost(Tensor?[] factors) =>
        factors.Select(x => x?.to(Model.DType, copy: true).cpu().contiguous().DetachFromDisposeScope()).ToArray();

    /// <summary>The model's fused weight of a group (or, for views without one, a concatenated copy the registry keeps).</summary>
    private Tensor GroupWeightOf(int layer, ProjectionGroup group)
    {
        if (Model.OwnsGroupWeights) return Model.GroupWeight(layer, group);
        if (_groupWeights.TryGetValue((layer, group), out var w)) return w;
        using var _ = no_grad();
        return _groupWeights[(layer, group)] = Model.GroupWeight(layer, group).DetachFromDisposeScope();
    }

    private static int GroupIndex(int layer, ProjectionGroup group) => layer * GroupCount + (int)group;

    /// <summary>For each (layer, group): the banks its rows use, which rows, and their slots, as device index tensors.</summary>
    private BatchPlan BuildPlan(List<Registered?> rows)
    {
        var groups = new Dictionary<(int Index, int Part, FactorBank Bank), (List<long> Rows, List<long> Slots)>();
        for (int row = 0; row < rows.Count; row++)
        {
            if (rows[row] is not { } adapter) continue;
            foreach (var p in adapter.Placements)
            {
                if (!groups.TryGetValue((p.GroupIndex, p.Part, p.Bank), out var g)) groups[(p.GroupIndex, p.Part, p.Bank)] = g = ([], []);
                g.Rows.Add(row);
                g.Slots.Add(p.Slot);
            }
        }
        var perGroup = new BankGroup[Model.LayerCount * GroupCount][];
        foreach (var byIndex in groups.GroupBy(g => g.Key.Index))
            perGroup[byIndex.Key] = byIndex.Select(g => new BankGroup(
                g.Key.Bank,
                PartColumns(byIndex.Key, g.Key.Part),
                AllRowsInOrder(g.Value.Rows, rows.Count) ? null : IndexTensor(g.Value.Rows),
                IndexTensor(g.Value.Slots))).ToArray();
        return new BatchPlan(rows.Count, Model.DType, perGroup, Options.PlanCacheBytes);
    }

    /// <summary>Where part <paramref name="part"/>'s outputs sit in its group's fused output (offset, size); null for a whole-group bank.</summary>
    private (long Offset, long Size)? PartColumns(int groupIndex, int part)
    {
        if (part < 0) return null;
        int layer = groupIndex / GroupCount;
        var parts = ProjectionGroups.Parts((ProjectionGroup)(groupIndex % GroupCount));
        long offset = 0;
        for (int i = 0; i < part; i++) offset += Model.Shape(layer, parts[i]).Out;
        return (offset, Model.Shape(layer, parts[part]).Out);
    }

    private static bool AllRowsInOrder(List<long> rows, int batch) => rows.Count == batch && rows.Select((r, i) => r == i).All(x => x);

    private Tensor IndexTensor(List<long> values) => tensor(values.ToArray(), dtype: ScalarType.Int64, device: Model.Device).DetachFromDisposeScope();

    /// <summary>Cheap guard for definitions built in code (files are fully checked by AdapterDefinition.Validate).</summary>
    private void CheckShapes(AdapterDefinition d)
    {
        var c = d.Config;
        foreach (var ((layer, proj), f) in d.Modules)
        {
            if (layer < 0 || layer >= Model.LayerCount) throw new ArgumentException($"adapter module for layer {layer}: the base has {Model.LayerCount} layers");
            var (m, n) = Model.Shape(layer, proj);
            int k = c.Kind == AdapterKind.Lora ? 1 : c.NumBlocks;
            if (f.A.Length != k || f.B.Length != k) throw new ArgumentException($"layer {layer} {ProjectionNames.ModuleName(proj)}: expected {k} factor pairs");
            if (c.Kind == AdapterKind.Smoa) SmoaLayout.CheckBlockCount(m, n, k, $"layer {layer} {ProjectionNames.ModuleName(proj)}");
            var rows = c.Kind == AdapterKind.Lora ? [m] : SmoaLayout.SplitSizes(m, k);
            var cols = c.Kind == AdapterKind.Lora ? [n] : SmoaLayout.SplitSizes(n, k);
            for (int blk = 0; blk < k; blk++)
            {
                int rk = c.BlockRanks[blk];
                bool ok = rk == 0 ? f.A[blk] is null && f.B[blk] is null
                    : f.A[blk] is { } a && f.B[blk] is { } b && a.shape.SequenceEqual(new long[] { rk, cols[blk] }) && b.shape.SequenceEqual(new long[] { rows[blk], rk });
                if (!ok) throw new ArgumentException($"layer {layer} {ProjectionNames.ModuleName(proj)} block {blk}: factors do not have shapes [{rk}, {cols[blk]}] and [{rows[blk]}, {rk}]");
            }
            if (f.CarriedLayout is { } l && (l.OutFeatures != m || l.InFeatures != n || l.K != k))
                throw new ArgumentException($"layer {layer} {ProjectionNames.ModuleName(proj)}: the stored layout is for another shape or block count");
        }
    }

    /// <summary>Ids are keys chosen by the caller (the catalog owns adapter names and their rule); only bounded here.</summary>
    private static void CheckName(string id)
    {
        if (string.IsNullOrEmpty(id) || id.Length > MaxIdLength || id.Any(char.IsControl))
            throw new ArgumentException($"adapter id must be 1-{MaxIdLength} characters without control characters");
    }

    private sealed record Registered(AdapterInfo Info, List<Placement> Placements);

    /// <summary>One bounded piece of an install's device work, with the host tensors it copies.</summary>
    internal abstract class InstallUnit : IDisposable
    {
        public abstract void Dispose();
    }

    internal sealed class AnchoredUnit(int layer, Projection projection, SmoaLayout layout, Tensor?[] a, Tensor?[] b, int rankPad) : InstallUnit
    {
        public int Layer => layer;
        public Projection Projection => projection;
        public SmoaLayout Layout => layout;
        public Tensor?[] A => a;
        public Tensor?[] B => b;
        public int RankPad => rankPad;
        public override void Dispose() { foreach (var t in a.Concat(b)) t?.Dispose(); }
    }

    internal sealed class GroupedUnit(int layer, ProjectionGroup group, int[] ranks, List<(int Part, Tensor A, Tensor Bt)> parts) : InstallUnit
    {
        public int Layer => layer;
        public ProjectionGroup Group => group;
        public int[] Ranks => ranks;
        public List<(int Part, Tensor A, Tensor Bt)> Parts => parts;
        public override void Dispose() { foreach (var p in parts) { p.A.Dispose(); p.Bt.Dispose(); } }
    }

    /// <summary>
    /// An adapter prepared by <see cref="Prepare"/>: its device copies one unit per <see cref="Step"/>, then <see cref="Commit"/>
    /// (model thread). Disposing it before the commit gives back every slot it took; nothing was visible.
    /// </summary>
    public sealed class AdapterInstall : IAdapterInstall
    {
        private readonly AdapterRegistry _registry;
        private readonly string _name;
        private readonly bool _replace;
        private readonly AdapterConfig _config;
        private readonly List<InstallUnit> _units;
        private readonly List<Placement> _placements = new();
        private readonly int _moduleCount;
        private readonly long _parameterCount;
        private readonly bool _carriedLayout;
        private int _next;
        private bool _committed, _disposed;

        internal AdapterInstall(AdapterRegistry registry, string name, bool replace, AdapterDefinition definition, List<InstallUnit> units)
        {
            _registry = registry;
            _name = name;
            _replace = replace;
            _config = definition.Config;
            _units = units;
            _moduleCount = definition.Modules.Count;
            _parameterCount = definition.ParameterCount;
            _carriedLayout = definition.Modules.Values.Any(m => m.CarriedLayout is not null);
        }

        /// <summary>Pieces of device work in all (one module or one projection group each).</summary>
        public int StepCount => _units.Count;

        public bool Step()
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_committed) throw new InvalidOperationException("the adapter is already committed");
            if (_next < _units.Count)
            {
                var unit = _units[_next];
                _placements.Add(unit switch
                {
                    AnchoredUnit a => _registry.PlaceAnchored(a, _config),
                    GroupedUnit g => _registry.PlaceGrouped(g, _config),
                    _ => throw new InvalidOperationException(),
                });
                unit.Dispose();
                _next++;
            }
            return _next < _units.Count;
        }

        public AdapterInfo Commit()
        {
            while (Step()) { }
            var c = _config;
            var info = new AdapterInfo(_name, c.Kind, c.R, c.NumBlocks, c.BlockRanks, c.Scaling,
                c.TargetModules.Select(ProjectionNames.ModuleName).ToList(), _moduleCount, _parameterCount,
                _placements.Sum(p => p.Bank.SlotBytes), _carriedLayout);
            lock (_registry._lock)
            {
                if (!_replace && _registry._adapters.ContainsKey(_name)) throw new InvalidOperationException($"adapter '{_name}' is already loaded; remove it first");
                if (_registry._adapters.Remove(_name, out var old))
                    foreach (var p in old.Placements) p.Bank.ReleaseSlot(p.Slot);
                _registry._adapters[_name] = new Registered(info, _placements.ToList());
                _registry._version++;
                _committed = true;
            }
            return info;
        }

        public void Dispose()
        {
            if (_disposed) return;
            _disposed = true;
            if (!_committed)
                lock (_registry._lock) foreach (var p in _placements) p.Bank.ReleaseSlot(p.Slot);
            for (int i = _next; i < _units.Count; i++) _units[i].Dispose();
        }
    }
    private sealed record Target(int Layer, Projection Projection, ModuleFactors Factors, SmoaLayout? Layout);
    /// <summary>One slot of an adapter: in a whole-group bank (<paramref name="Part"/> -1) or in one part's anchored bank.</summary>
    internal sealed record Placement(int GroupIndex, int Part, FactorBank Bank, int Slot);
    /// <summary>The rows of one batch that use one bank on one (layer, group), and their slots there.</summary>
    internal sealed class BankGroup(FactorBank bank, (long Offset, long Size)? partColumns, Tensor? rows, Tensor slots)
    {
        public FactorBank Bank { get; } = bank;
        /// <summary>For a one-part (anchored SMoA) bank: that part's columns of the group output; null for a whole-group bank.</summary>
        public (long Offset, long Size)? PartColumns { get; } = partColumns;
        /// <summary>[n] batch rows, or null when the group is the whole batch in order.</summary>
        public Tensor? Rows { get; } = rows;
        /// <summary>[n] each row's slot in <see cref="Bank"/>.</summary>
        public Tensor Slots { get; } = slots;
        /// <summary>The rows' gathered factors, kept when the plan is reused (decode steps), else null.</summary>
        public GatheredFactors? Cached { get; set; }
    }

    /// <summary>Everything a forward needs that depends only on which adapter each row uses; cached per composition.</summary>
    internal sealed class BatchPlan(int batchSize, ScalarType dtype, BankGroup[]?[] groups, long cacheBudget)
    {
        public int BatchSize { get; } = batchSize;
        public ScalarType DType { get; } = dtype;
        /// <summary>Per layer·4 + projection group: the bank groups of that group, or null when no row adapts it.</summary>
        public BankGroup[]?[] Groups { get; } = groups;
        public int Uses { get; set; } = 1;
        private long _cachedBytes;

        /// <summary>The group's gathered factors: cached from the second use of the plan on, within the byte budget.</summary>
        public GatheredFactors Factors(BankGroup g)
        {
            if (g.Cached is { } cached) return cached;
            var f = g.Bank.Gather(g.Slots);
            if (Uses >= 2 && _cachedBytes + f.Bytes <= cacheBudget)
            {
                f.A.DetachFromDisposeScope();
                f.Bt.DetachFromDisposeScope();
                g.Cached = f;
                _cachedBytes += f.Bytes;
            }
            return f;
        }

        public void DropCachedFactors()
        {
            foreach (var g in Groups.Where(gs => gs is not null).SelectMany(gs => gs!))
            {
                var c = g.Cached;
                g.Cached = null;
                c?.A.Dispose();
                c?.Bt.Dispose();
            }
            _cachedBytes = 0;
        }
    }

    /// <summary>One forward's adapters: for every (layer, group), ΔW x of each adapted row and part added to y.</summary>
    private sealed class AdapterBatch(BatchPlan plan) : IAdapterBatch
    {
        public Tensor Apply(int layer, ProjectionGroup group, Tensor x, Tensor y)
        {
            int index = GroupIndex(layer, group);
            if (index < 0 || index >= plan.Groups.Length || plan.Groups[index] is not { } groups) return y;
            if (x.shape[0] != plan.BatchSize)
                throw new InvalidOperationException($"adapter batch was built for {plan.BatchSize} rows but the forward has {x.shape[0]}");
            var outDtype = y.dtype;
            if (x.dtype != plan.DType) x = x.to(plan.DType);
            if (y.dtype != plan.DType) y = y.to(plan.DType);
            foreach (var g in groups)
            {
                var f = plan.Factors(g);
                var xs = g.Rows is null ? x : x.index_select(0, g.Rows);                     // [n, T, in]
                if (g.Bank is GroupBank whole)
                {
                    var delta = whole.Delta(xs, f);                                          // [n, T, Σout]
                    y = g.Rows is null ? y.add_(delta) : y.index_add_(0, g.Rows, delta, 1);
                }
                else
                {
                    var (offset, size) = g.PartColumns!.Value;
                    var bank = (SmoaBank)g.Bank;
                    if (g.Rows is null && bank.TryAddDecodeDeltaOnCpu(xs, y, offset, f)) continue;  // float32 CPU decode
                    var part = y.narrow(-1, offset, size);                                   // [B, T, out_p]: a view of y, updated in place
                    if (g.Rows is null) bank.AddDelta(xs, part, f);
                    else part.index_copy_(0, g.Rows, bank.AddDelta(xs, part.index_select(0, g.Rows), f));
                }
            }
            return y.dtype == outDtype ? y : y.to(outDtype);
        }
    }
}
