using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Model;

/// <summary>How the base weights of the projections and lm_head are stored for the CPU decode kernel.</summary>
public enum WeightStorage
{
    /// <summary>The float32 weights themselves (no copy).</summary>
    Float32,
    /// <summary>bfloat16 (W rounded to nearest even), float32 accumulation.</summary>
    BFloat16,
    /// <summary>int8 per output channel (row): W ≈ scale[n] · q[n, :], scale = max|W[n, :]| / 127, float32 accumulation.</summary>
    Int8,
}

public static class WeightStorages
{
    /// <summary>"float32" (or null) / "bf16" / "int8", as the command line and the server settings spell them.</summary>
    public static WeightStorage Parse(string? name) => name?.Trim().ToLowerInvariant() switch
    {
        null or "float32" or "f32" or "fp32" => WeightStorage.Float32,
        "bf16" or "bfloat16" => WeightStorage.BFloat16,
        "int8" or "i8" => WeightStorage.Int8,
        var other => throw new ArgumentException($"weights dtype '{other}' is not float32, bf16 or int8"),
    };
}

/// <summary>
/// y = x Wᵀ (+ b) for a few rows of x (decode: one row per sequence) on the CPU, reading each weight row once per call
/// for all rows of x: the step is bound by how fast the weights stream from memory, so the kernel does nothing but
/// stream them (float32, bfloat16 or int8 storage, float32 accumulation) on the intra-op threads. The GEMM libraries'
/// small-M paths re-read or repack the weights (measured here: F.linear with 16 rows of x took 3-8× the time of one row).
/// </summary>
public sealed class CpuGemv : IDisposable
{
    /// <summary>Rows of x up to which the kernel is used; more rows (prefill) go to the GEMM library.</summary>
    public const int MaxRows = 64;

    /// <summary>Off: every projection goes to F.linear again (for side-by-side measurements in one process).</summary>
    public static bool Enabled { get; set; } = true;

    private readonly Tensor _weight;   // [N, K] in the storage dtype (float32: the model's own tensor, not owned)
    private readonly Tensor? _scale;   // int8: float32 [N]
    private readonly Tensor? _bias;    // float32 [N] or null (not owned)
    private readonly bool _ownsWeight;

    public WeightStorage Storage { get; }
    public long OutFeatures { get; }
    public long InFeatures { get; }
    /// <summary>Bytes of weights one call streams.</summary>
    public long WeightBytes => _weight.NumberOfElements * _weight.ElementSize + (_scale?.NumberOfElements * 4 ?? 0);

    /// <summary>
    /// Kernel over <paramref name="weight"/> (float32 [N, K], contiguous, CPU). For bfloat16 / int8 storage a rounded
    /// copy is made and <paramref name="weight"/> is overwritten in place with the values the kernel multiplies by
    /// (the dequantized W), so every other use of the weight (prefill GEMMs, adapter anchors) sees the same base.
    /// </summary>
    public CpuGemv(Tensor weight, Tensor? bias, WeightStorage storage)
    {
        if (weight.dim() != 2 || weight.dtype != ScalarType.Float32 || weight.device.type != DeviceType.CPU || !weight.is_contiguous())
            throw new ArgumentException("the CPU kernel needs a contiguous float32 [N, K] weight on the CPU");
        Storage = storage;
        OutFeatures = weight.shape[0];
        InFeatures = weight.shape[1];
        if (bias is not null && (bias.dtype != ScalarType.Float32 || !bias.is_contiguous() || bias.NumberOfElements != OutFeatures))
            throw new ArgumentException("the CPU kernel needs a contiguous float32 [N] bias");
        _bias = bias;
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        switch (storage)
        {
            case WeightStorage.Float32:
                _weight = weight;
                break;
            case WeightStorage.BFloat16:
                _weight = weight.to_type(ScalarType.BFloat16).contiguous().DetachFromDisposeScope();
                _ownsWeight = true;
                weight.copy_(_weight);
                break;
            case WeightStorage.Int8:
                var scale = weight.abs().amax([1L]).div_(127.0).clamp_min_(1e-30f);                // [N]
                var q = weight.div(scale.unsqueeze(1)).round_().clamp_(-127, 127);                   // [N, K] integers
                _weight = q.to_type(ScalarType.Int8).contiguous().DetachFromDisposeScope();
                _scale = scale.contiguous().DetachFromDisposeScope();
                _ownsWeight = true;
                weight.copy_(q.mul_(scale.unsqueeze(1)));
                break;
            default: throw new ArgumentOutOfRangeException(nameof(storage));
        }
    }

    /// <summary>
    /// True when <paramref name="x"/> (float32 [..., K] on the CPU) has few enough rows for the kernel and needs no
    /// gradient (the kernel is not part of the autograd graph; training through the base goes to F.linear).
    /// </summary>
    public bool Accepts(Tensor x) =>
        !x.requires_grad && x.dtype == ScalarType.Float32 && x.device.type == DeviceType.CPU && x.shape[^1] == InFeatures
        && x.NumberOfElements / InFeatures <= MaxRows;

    /// <summary>x [..., K] → y [..., N] (a new tensor).</summary>
    public unsafe Tensor Forward(Tensor x)
    {
        if (!Accepts(x)) throw new ArgumentException($"x [{string.Join(", ", x.shape)}] {x.dtype} is not a float32 CPU input of width {InFeatures}");
        var input = x.is_contiguous() ? x : x.contiguous();
        long m = input.NumberOfElements / InFeatures;
        var shape = x.shape.ToArray();
        shape[^1] = OutFeatures;
        var y = torch.empty(shape, ScalarType.Float32);
        if (m == 0) return y;
        var job = new Job
        {
            X = (float*)Pointer(input), Y = (float*)Pointer(y), W = Pointer(_weight),
            Scale = _scale is null ? null : (float*)Pointer(_scale), Bias = _bias is null ? null : (float*)Pointer(_bias),
            M = (int)m, N = (int)OutFeatures, K = (int)InFeatures, Storage = Storage,
        };
        Run(job);
        if (!ReferenceEquals(input, x)) input.Dispose();
        return y;
    }

    private static unsafe void* Pointer(Tensor t) => Unsafe.AsPointer(ref MemoryMarshal.GetReference(t.bytes));

    private unsafe struct Job
    {
        public float* X, Y, Scale, Bias;
        public void* W;
        public int M, N, K;
        public WeightStorage Storage;
    }

    /// <summary>Output rows in chunks taken by the threads as they come free (a busy core does not hold the others up).</summary>
    private static void Run(Job job)
    {
        int threads = Math.Max(1, torch.get_num_threads());
        const int rowsPerChunk = 64; // multiple of the 4-row tile
        int chunks = (job.N + rowsPerChunk - 1) / rowsPerChunk;
        if (threads == 1 || chunks == 1) { Rows(job, 0, job.N); return; }
        int next = -1;
        Parallel.For(0, Math.Min(threads, chunks), new ParallelOptions { MaxDegreeOfParallelism = threads }, _ =>
        {
            for (int c; (c = Interlocked.Increment(ref next)) < chunks;)
                Rows(job, c * rowsPerChunk, Math.Min(job.N, (c + 1) * rowsPerChunk));
        });
    }

    private static unsafe void Rows(Job job, int n0, int n1)
    {
        switch (job.Storage)
        {
            case WeightStorage.Float32: Rows<F32>(job, n0, n1); break;
            case WeightStorage.BFloat16: Rows<Bf16>(job, n0, n1); break;
            default: Rows<I8>(job, n0, n1); break;
        }
    }

    /// <summary>Output features n0..n1-1 for every row of x: 4 weight rows × 2 input rows per tile, 8 accumulators.</summary>
    private static unsafe void Rows<TW>(Job job, int n0, int n1) where TW : struct, IWeightLoad
    {
        int k = job.K, m = job.M, n = n0;
        for (; n + 4 <= n1; n += 4)
        {
            int i = 0;
            for (; i + 2 <= m; i += 2) Tile4x2<TW>(job, n, i);
            if (i < m) Tile4x1<TW>(job, n, i);
        }
        for (; n < n1; n++)
            for (int i = 0; i < m; i++)
                Store(job, n, i, Dot<TW>(job.W, n, k, job.X + (long)i * k));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Store(Job job, int n, int i, float dot)
    {
        if (job.Scale is not null) dot *= job.Scale[n];
        if (job.Bias is not null) dot += job.Bias[n];
        job.Y[(long)i * job.N + n] = dot;
    }

    private static unsafe void Tile4x2<TW>(Job job, int n, int i) where TW : struct, IWeightLoad
    {
        int k = job.K;
        float* x0 = job.X + (long)i * k, x1 = x0 + k;
        Vector256<float> a00 = default, a10 = default, a20 = default, a30 = default;
        Vector256<float> a01 = default, a11 = default, a21 = default, a31 = default;
        int j = 0;
        for (; j + 8 <= k; j += 8)
        {
            var v0 = Vector256.Load(x0 + j);
            var v1 = Vector256.Load(x1 + j);
            var w0 = TW.Load(job.W, (long)n * k + j);
            var w1 = TW.Load(job.W, (long)(n + 1) * k + j);
            var w2 = TW.Load(job.W, (long)(n + 2) * k + j);
            var w3 = TW.Load(job.W, (long)(n + 3) * k + j);
            a00 = Vector256.FusedMultiplyAdd(w0, v0, a00); a01 = Vector256.FusedMultiplyAdd(w0, v1, a01);
            a10 = Vector256.FusedMultiplyAdd(w1, v0, a10); a11 = Vector256.FusedMultiplyAdd(w1, v1, a11);
            a20 = Vector256.FusedMultiplyAdd(w2, v0, a20); a21 = Vector256.FusedMultiplyAdd(w2, v1, a21);
            a30 = Vector256.FusedMultiplyAdd(w3, v0, a30); a31 = Vector256.FusedMultiplyAdd(w3, v1, a31);
        }
        float s00 = Vector256.Sum(a00), s10 = Vector256.Sum(a10), s20 = Vector256.Sum(a20), s30 = Vector256.Sum(a30);
        float s01 = Vector256.Sum(a01), s11 = Vector256.Sum(a11), s21 = Vector256.Sum(a21), s31 = Vector256.Sum(a31);
        for (; j < k; j++)
        {
            float w0 = TW.LoadScalar(job.W, (long)n * k + j), w1 = TW.LoadScalar(job.W, (long)(n + 1) * k + j);
            float w2 = TW.LoadScalar(job.W, (long)(n + 2) * k + j), w3 = TW.LoadScalar(job.W, (long)(n + 3) * k + j);
            s00 += w0 * x0[j]; s10 += w1 * x0[j]; s20 += w2 * x0[j]; s30 += w3 * x0[j];
            s01 += w0 * x1[j]; s11 += w1 * x1[j]; s21 += w2 * x1[j]; s31 += w3 * x1[j];
        }
        Store(job, n, i, s00); Store(job, n + 1, i, s10); Store(job, n + 2, i, s20); Store(job, n + 3, i, s30);
        Store(job, n, i + 1, s01); Store(job, n + 1, i + 1, s11); Store(job, n + 2, i + 1, s21); Store(job, n + 3, i + 1, s31);
    }

    private static unsafe void Tile4x1<TW>(Job job, int n, int i) where TW : struct, IWeightLoad
    {
        int k = job.K;
        float* x0 = job.X + (long)i * k;
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        int j = 0;
        for (; j + 8 <= k; j += 8)
        {
            var v0 = Vector256.Load(x0 + j);
            a0 = Vector256.FusedMultiplyAdd(TW.Load(job.W, (long)n * k + j), v0, a0);
            a1 = Vector256.FusedMultiplyAdd(TW.Load(job.W, (long)(n + 1) * k + j), v0, a1);
            a2 = Vector256.FusedMultiplyAdd(TW.Load(job.W, (long)(n + 2) * k + j), v0, a2);
            a3 = Vector256.FusedMultiplyAdd(TW.Load(job.W, (long)(n + 3) * k + j), v0, a3);
        }
        float s0 = Vector256.Sum(a0), s1 = Vector256.Sum(a1), s2 = Vector256.Sum(a2), s3 = Vector256.Sum(a3);
        for (; j < k; j++)
        {
            s0 += TW.LoadScalar(job.W, (long)n * k + j) * x0[j];
            s1 += TW.LoadScalar(job.W, (long)(n + 1) * k + j) * x0[j];
            s2 += TW.LoadScalar(job.W, (long)(n + 2) * k + j) * x0[j];
            s3 += TW.LoadScalar(job.W, (long)(n + 3) * k + j) * x0[j];
        }
        Store(job, n, i, s0); Store(job, n + 1, i, s1); Store(job, n + 2, i, s2); Store(job, n + 3, i, s3);
    }

    private static unsafe float Dot<TW>(void* w, int n, int k, float* x) where TW : struct, IWeightLoad
    {
        var acc = Vector256<float>.Zero;
        int j = 0;
        for (; j + 8 <= k; j += 8) acc = Vector256.FusedMultiplyAdd(TW.Load(w, (long)n * k + j), Vector256.Load(x + j), acc);
        float s = Vector256.Sum(acc);
        for (; j < k; j++) s += TW.LoadScalar(w, (long)n * k + j) * x[j];
        return s;
    }

    /// <summary>Eight consecutive weights (element offset <c>at</c>) as float32.</summary>
    private interface IWeightLoad
    {
        static abstract unsafe Vector256<float> Load(void* w, long at);
        static abstract unsafe float LoadScalar(void* w, long at);
    }

    private struct F32 : IWeightLoad
    {
        public static unsafe Vector256<float> Load(void* w, long at) => Vector256.Load((float*)w + at);
        public static unsafe float LoadScalar(void* w, long at) => ((float*)w)[at];
    }

    /// <summary>bfloat16 is the upper half of a float32: widen to 32 bits and shift left by 16.</summary>
    private struct Bf16 : IWeightLoad
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static unsafe Vector256<float> Load(void* w, long at)
        {
            var bits = Vector128.Load((ushort*)w + at);
            var wide = Avx2.IsSupported ? Avx2.ConvertToVector256Int32(bits).AsUInt32() : Vector256.Create(Vector128.WidenLower(bits), Vector128.WidenUpper(bits));
            return Vector256.ShiftLeft(wide, 16).AsSingle();
        }
        public static unsafe float LoadScalar(void* w, long at) => BitConverter.Int32BitsToSingle(((ushort*)w)[at] << 16);
    }

    /// <summary>int8 → int32 → float32; the row's scale is applied once to the finished dot product.</summary>
    private struct I8 : IWeightLoad
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static unsafe Vector256<float> Load(void* w, long at)
        {
            if (Avx2.IsSupported) return Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32((sbyte*)w + at));
            var b = Vector64.Load((sbyte*)w + at);
            var s = Vector128.WidenLower(Vector128.Create(b, Vector64<sbyte>.Zero));                    // 8 × int16
            return Vector256.ConvertToSingle(Vector256.Create(Vector128.WidenLower(s), Vector128.WidenUpper(s)));
        }
        public static unsafe float LoadScalar(void* w, long at) => ((sbyte*)w)[at];
    }

    public void Dispose()
    {
        if (_ownsWeight) _weight.Dispose();
        _scale?.Dispose();
    }
}
