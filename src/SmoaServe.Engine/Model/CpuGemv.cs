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
/// stream them (float32, bfloat16 or int8 storage, float32 accumulation) on <see cref="CpuWorkers"/> (as many threads
/// as libtorch's intra-op threads). The GEMM libraries' small-M paths re-read or repack the weights (measured here:
/// F.linear with 16 rows of x took 3-8× the time of one row). Tiles: 4 weight rows × 4, 2 or 1 rows of x, the next
/// tile's weight rows prefetched; bfloat16 rows are widened without shuffles (even and odd elements separately, against
/// an input reordered to match once per call).
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
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
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
        if (Storage == WeightStorage.BFloat16)
        {
            var blocks = System.Buffers.ArrayPool<float>.Shared.Rent((int)(m * InFeatures));
            fixed (float* xb = blocks)
            {
                job.XBlocks = xb;
                EvenOddBlocks(job.X, xb, (int)m, (int)InFeatures);
                Run(job);
            }
            System.Buffers.ArrayPool<float>.Shared.Return(blocks);
        }
        else
        {
            job.XBlocks = job.X;
            Run(job);
        }
        if (!ReferenceEquals(input, x)) input.Dispose();
        return y;
    }

    /// <summary>Each row's 16-element blocks as [even elements, odd elements] (the order in which <see cref="Bf16.Load16"/> yields weights).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void EvenOddBlocks(float* x, float* blocks, int m, int k)
    {
        for (int i = 0; i < m; i++)
        {
            float* from = x + (long)i * k, to = blocks + (long)i * k;
            int j = 0;
            for (; j + 16 <= k; j += 16)
                for (int l = 0; l < 8; l++) { to[j + l] = from[j + 2 * l]; to[j + 8 + l] = from[j + 2 * l + 1]; }
            for (; j < k; j++) to[j] = from[j];
        }
    }

    private static unsafe void* Pointer(Tensor t) => Unsafe.AsPointer(ref MemoryMarshal.GetReference(t.bytes));

    private unsafe struct Job
    {
        /// <summary>X: the input rows; XBlocks: the same rows in the element order of <see cref="IWeightLoad.Load16"/> (X itself unless the storage interleaves).</summary>
        public float* X, XBlocks, Y, Scale, Bias;
        public void* W;
        public int M, N, K;
        public WeightStorage Storage;
    }

    /// <summary>
    /// y_i = x_i W_iᵀ for several float32 kernels and inputs in one dispatch to the threads (the K anchor blocks of an
    /// SMoA adapter part: small products whose separate dispatches would cost as much as their arithmetic).
    /// </summary>
    /// <returns>one new tensor per input, [..., N_i]</returns>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static unsafe Tensor[] ForwardEach(IReadOnlyList<CpuGemv> kernels, IReadOnlyList<Tensor> inputs)
    {
        if (kernels.Count != inputs.Count) throw new ArgumentException($"{kernels.Count} kernels for {inputs.Count} inputs");
        var jobs = new Job[kernels.Count];
        var outputs = new Tensor[kernels.Count];
        for (int i = 0; i < jobs.Length; i++)
        {
            var (kernel, x) = (kernels[i], inputs[i]);
            if (kernel.Storage != WeightStorage.Float32 || !kernel.Accepts(x) || !x.is_contiguous())
                throw new ArgumentException($"input {i}: a contiguous float32 CPU input of width {kernel.InFeatures} for a float32 kernel is needed");
            var shape = x.shape;
            shape[^1] = kernel.OutFeatures;
            outputs[i] = torch.empty(shape, ScalarType.Float32);
            jobs[i] = kernel.JobFor(x, outputs[i]);
            jobs[i].XBlocks = jobs[i].X;
        }
        Run(jobs);
        return outputs;
    }

    private unsafe Job JobFor(Tensor input, Tensor output) => new()
    {
        X = (float*)Pointer(input), Y = (float*)Pointer(output), W = Pointer(_weight),
        Scale = _scale is null ? null : (float*)Pointer(_scale), Bias = _bias is null ? null : (float*)Pointer(_bias),
        M = (int)(input.NumberOfElements / InFeatures), N = (int)OutFeatures, K = (int)InFeatures, Storage = Storage,
    };

    /// <summary>
    /// Output rows in chunks taken by the threads as they come free (a busy core does not hold the others up): 128 rows
    /// when the product streams weights (one or two input rows: long runs for the prefetchers), fewer when it is bound
    /// by arithmetic (many input rows) and a small matrix would otherwise leave a thread idle.
    /// </summary>
    private static int ChunkRows(int n, int m, int threads) => m <= 2 ? 128 : Math.Clamp((n / (threads * 4) + 3) / 4 * 4, 16, 128);

    private static void Run(Job job) => Run([job]);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Run(Job[] jobs)
    {
        int threads = Math.Max(1, torch.get_num_threads());
        var first = new int[jobs.Length + 1];     // chunk index where job i starts
        var size = new int[jobs.Length];
        for (int i = 0; i < jobs.Length; i++)
        {
            size[i] = ChunkRows(jobs[i].N, jobs[i].M, threads);
            first[i + 1] = first[i] + (jobs[i].N + size[i] - 1) / size[i];
        }
        int chunks = first[^1];
        void Chunk(int c)
        {
            int i = 0;
            while (c >= first[i + 1]) i++;
            int n0 = (c - first[i]) * size[i];
            Rows(jobs[i], n0, Math.Min(jobs[i].N, n0 + size[i]));
        }
        if (threads == 1 || chunks == 1)
        {
            for (int c = 0; c < chunks; c++) Chunk(c);
            return;
        }
        int next = -1;
        CpuWorkers.For(threads).Run(_ =>
        {
            for (int c; (c = Interlocked.Increment(ref next)) < chunks;) Chunk(c);
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

    /// <summary>
    /// Output features n0..n1-1 for every row of x, in tiles of 4 weight rows × 4, 2 or 1 input rows: the 4 weight rows
    /// are streamed from memory once and stay in L1 for the other input rows; 4 × 4 keeps 16 accumulators busy per load.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void Rows<TW>(Job job, int n0, int n1) where TW : struct, IWeightLoad
    {
        int k = job.K, m = job.M, n = n0;
        for (; n + 4 <= n1; n += 4)
        {
            void* w0 = TW.Row(job.W, n, k), w1 = TW.Row(job.W, n + 1, k), w2 = TW.Row(job.W, n + 2, k), w3 = TW.Row(job.W, n + 3, k);
            int i = 0;
            for (; i + 4 <= m; i += 4) Tile4x4<TW>(job, w0, w1, w2, w3, n, i);
            for (; i + 2 <= m; i += 2) Tile4x2<TW>(job, w0, w1, w2, w3, n, i);
            if (i < m) Tile4x1<TW>(job, w0, w1, w2, w3, n, i);
        }
        for (; n < n1; n++)
            for (int i = 0; i < m; i++)
                Store(job, n, i, Dot<TW>(TW.Row(job.W, n, k), k, job.X + (long)i * k));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Store(in Job job, int n, int i, float dot)
    {
        if (job.Scale is not null) dot *= job.Scale[n];
        if (job.Bias is not null) dot += job.Bias[n];
        job.Y[(long)i * job.N + n] = dot;
    }

    /// <summary>Weight rows w0..w3 (output features n..n+3) against input rows i..i+3 (batches: 16 accumulators).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void Tile4x4<TW>(in Job job, void* w0, void* w1, void* w2, void* w3, int n, int i) where TW : struct, IWeightLoad
    {
        int k = job.K;
        float* x0 = job.X + (long)i * k;
        float* b0 = job.XBlocks + (long)i * k, b1 = b0 + k, b2 = b1 + k, b3 = b2 + k;
        Vector256<float> a00 = default, a01 = default, a02 = default, a03 = default;
        Vector256<float> a10 = default, a11 = default, a12 = default, a13 = default;
        Vector256<float> a20 = default, a21 = default, a22 = default, a23 = default;
        Vector256<float> a30 = default, a31 = default, a32 = default, a33 = default;
        int j = 0;
        for (; j + 16 <= k; j += 16)
        {
            var v0 = Vector256.Load(b0 + j); var u0 = Vector256.Load(b0 + j + 8);
            var v1 = Vector256.Load(b1 + j); var u1 = Vector256.Load(b1 + j + 8);
            var v2 = Vector256.Load(b2 + j); var u2 = Vector256.Load(b2 + j + 8);
            var v3 = Vector256.Load(b3 + j); var u3 = Vector256.Load(b3 + j + 8);
            TW.Load16(w0, j, out var r, out var q);
            a00 = Vector256.FusedMultiplyAdd(r, v0, a00); a01 = Vector256.FusedMultiplyAdd(r, v1, a01);
            a02 = Vector256.FusedMultiplyAdd(r, v2, a02); a03 = Vector256.FusedMultiplyAdd(r, v3, a03);
            a00 = Vector256.FusedMultiplyAdd(q, u0, a00); a01 = Vector256.FusedMultiplyAdd(q, u1, a01);
            a02 = Vector256.FusedMultiplyAdd(q, u2, a02); a03 = Vector256.FusedMultiplyAdd(q, u3, a03);
            TW.Load16(w1, j, out r, out q);
            a10 = Vector256.FusedMultiplyAdd(r, v0, a10); a11 = Vector256.FusedMultiplyAdd(r, v1, a11);
            a12 = Vector256.FusedMultiplyAdd(r, v2, a12); a13 = Vector256.FusedMultiplyAdd(r, v3, a13);
            a10 = Vector256.FusedMultiplyAdd(q, u0, a10); a11 = Vector256.FusedMultiplyAdd(q, u1, a11);
            a12 = Vector256.FusedMultiplyAdd(q, u2, a12); a13 = Vector256.FusedMultiplyAdd(q, u3, a13);
            TW.Load16(w2, j, out r, out q);
            a20 = Vector256.FusedMultiplyAdd(r, v0, a20); a21 = Vector256.FusedMultiplyAdd(r, v1, a21);
            a22 = Vector256.FusedMultiplyAdd(r, v2, a22); a23 = Vector256.FusedMultiplyAdd(r, v3, a23);
            a20 = Vector256.FusedMultiplyAdd(q, u0, a20); a21 = Vector256.FusedMultiplyAdd(q, u1, a21);
            a22 = Vector256.FusedMultiplyAdd(q, u2, a22); a23 = Vector256.FusedMultiplyAdd(q, u3, a23);
            TW.Load16(w3, j, out r, out q);
            a30 = Vector256.FusedMultiplyAdd(r, v0, a30); a31 = Vector256.FusedMultiplyAdd(r, v1, a31);
            a32 = Vector256.FusedMultiplyAdd(r, v2, a32); a33 = Vector256.FusedMultiplyAdd(r, v3, a33);
            a30 = Vector256.FusedMultiplyAdd(q, u0, a30); a31 = Vector256.FusedMultiplyAdd(q, u1, a31);
            a32 = Vector256.FusedMultiplyAdd(q, u2, a32); a33 = Vector256.FusedMultiplyAdd(q, u3, a33);
        }
        float* sums = stackalloc float[16];
        sums[0] = Vector256.Sum(a00); sums[1] = Vector256.Sum(a01); sums[2] = Vector256.Sum(a02); sums[3] = Vector256.Sum(a03);
        sums[4] = Vector256.Sum(a10); sums[5] = Vector256.Sum(a11); sums[6] = Vector256.Sum(a12); sums[7] = Vector256.Sum(a13);
        sums[8] = Vector256.Sum(a20); sums[9] = Vector256.Sum(a21); sums[10] = Vector256.Sum(a22); sums[11] = Vector256.Sum(a23);
        sums[12] = Vector256.Sum(a30); sums[13] = Vector256.Sum(a31); sums[14] = Vector256.Sum(a32); sums[15] = Vector256.Sum(a33);
        // the last k mod 16 elements, in order
        for (int r = 0; r < 4; r++)
        {
            void* w = r == 0 ? w0 : r == 1 ? w1 : r == 2 ? w2 : w3;
            for (int c = 0; c < 4; c++)
            {
                float sum = sums[r * 4 + c];
                float* x = x0 + (long)c * k;
                for (int t = j; t < k; t++) sum += TW.LoadScalar(w, t) * x[t];
                Store(job, n + r, i + c, sum);
            }
        }
    }

    /// <summary>Weight rows w0..w3 (output features n..n+3) against input rows i and i+1.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void Tile4x2<TW>(in Job job, void* w0, void* w1, void* w2, void* w3, int n, int i) where TW : struct, IWeightLoad
    {
        int k = job.K;
        float* x0 = job.X + (long)i * k, x1 = x0 + k;
        Vector256<float> a00 = default, a10 = default, a20 = default, a30 = default;
        Vector256<float> a01 = default, a11 = default, a21 = default, a31 = default;
        float* xb0 = job.XBlocks + (long)i * k, xb1 = xb0 + k;
        long ahead = 4 * ((byte*)w1 - (byte*)w0);     // four rows on, in bytes: the next tile (see Tile4x1)
        int j = 0;
        for (; j + 16 <= k; j += 16)
        {
            if (Sse.IsSupported)
            {
                Sse.Prefetch0((byte*)TW.At(w0, j) + ahead); Sse.Prefetch0((byte*)TW.At(w1, j) + ahead);
                Sse.Prefetch0((byte*)TW.At(w2, j) + ahead); Sse.Prefetch0((byte*)TW.At(w3, j) + ahead);
            }
            var v0 = Vector256.Load(xb0 + j);
            var v1 = Vector256.Load(xb1 + j);
            var u0 = Vector256.Load(xb0 + j + 8);
            var u1 = Vector256.Load(xb1 + j + 8);
            TW.Load16(w0, j, out var r0, out var q0);
            TW.Load16(w1, j, out var r1, out var q1);
            TW.Load16(w2, j, out var r2, out var q2);
            TW.Load16(w3, j, out var r3, out var q3);
            a00 = Vector256.FusedMultiplyAdd(r0, v0, a00); a01 = Vector256.FusedMultiplyAdd(r0, v1, a01);
            a10 = Vector256.FusedMultiplyAdd(r1, v0, a10); a11 = Vector256.FusedMultiplyAdd(r1, v1, a11);
            a20 = Vector256.FusedMultiplyAdd(r2, v0, a20); a21 = Vector256.FusedMultiplyAdd(r2, v1, a21);
            a30 = Vector256.FusedMultiplyAdd(r3, v0, a30); a31 = Vector256.FusedMultiplyAdd(r3, v1, a31);
            a00 = Vector256.FusedMultiplyAdd(q0, u0, a00); a01 = Vector256.FusedMultiplyAdd(q0, u1, a01);
            a10 = Vector256.FusedMultiplyAdd(q1, u0, a10); a11 = Vector256.FusedMultiplyAdd(q1, u1, a11);
            a20 = Vector256.FusedMultiplyAdd(q2, u0, a20); a21 = Vector256.FusedMultiplyAdd(q2, u1, a21);
            a30 = Vector256.FusedMultiplyAdd(q3, u0, a30); a31 = Vector256.FusedMultiplyAdd(q3, u1, a31);
        }
        for (; j + 8 <= k; j += 8)
        {
            var v0 = Vector256.Load(x0 + j);
            var v1 = Vector256.Load(x1 + j);
            var r0 = TW.Load(w0, j);
            var r1 = TW.Load(w1, j);
            var r2 = TW.Load(w2, j);
            var r3 = TW.Load(w3, j);
            a00 = Vector256.FusedMultiplyAdd(r0, v0, a00); a01 = Vector256.FusedMultiplyAdd(r0, v1, a01);
            a10 = Vector256.FusedMultiplyAdd(r1, v0, a10); a11 = Vector256.FusedMultiplyAdd(r1, v1, a11);
            a20 = Vector256.FusedMultiplyAdd(r2, v0, a20); a21 = Vector256.FusedMultiplyAdd(r2, v1, a21);
            a30 = Vector256.FusedMultiplyAdd(r3, v0, a30); a31 = Vector256.FusedMultiplyAdd(r3, v1, a31);
        }
        float s00 = Vector256.Sum(a00), s10 = Vector256.Sum(a10), s20 = Vector256.Sum(a20), s30 = Vector256.Sum(a30);
        float s01 = Vector256.Sum(a01), s11 = Vector256.Sum(a11), s21 = Vector256.Sum(a21), s31 = Vector256.Sum(a31);
        for (; j < k; j++)
        {
            float r0 = TW.LoadScalar(w0, j), r1 = TW.LoadScalar(w1, j), r2 = TW.LoadScalar(w2, j), r3 = TW.LoadScalar(w3, j);
            s00 += r0 * x0[j]; s10 += r1 * x0[j]; s20 += r2 * x0[j]; s30 += r3 * x0[j];
            s01 += r0 * x1[j]; s11 += r1 * x1[j]; s21 += r2 * x1[j]; s31 += r3 * x1[j];
        }
        Store(job, n, i, s00); Store(job, n + 1, i, s10); Store(job, n + 2, i, s20); Store(job, n + 3, i, s30);
        Store(job, n, i + 1, s01); Store(job, n + 1, i + 1, s11); Store(job, n + 2, i + 1, s21); Store(job, n + 3, i + 1, s31);
    }

    /// <summary>
    /// Weight rows w0..w3 (output features n..n+3) against input row i (batch 1: all of the step's weights go through
    /// here). The next tile's rows are prefetched while this one streams: the hardware prefetcher follows each row but
    /// has to find the next four rows' starts itself (measured: ~10 % more GB/s on the 125M shape).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void Tile4x1<TW>(in Job job, void* w0, void* w1, void* w2, void* w3, int n, int i) where TW : struct, IWeightLoad
    {
        int k = job.K;
        float* x0 = job.X + (long)i * k, xb = job.XBlocks + (long)i * k;
        long ahead = 4 * ((byte*)w1 - (byte*)w0);     // four rows on, in bytes
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        int j = 0;
        for (; j + 16 <= k; j += 16)
        {
            if (Sse.IsSupported)
            {
                Sse.Prefetch0((byte*)TW.At(w0, j) + ahead); Sse.Prefetch0((byte*)TW.At(w1, j) + ahead);
                Sse.Prefetch0((byte*)TW.At(w2, j) + ahead); Sse.Prefetch0((byte*)TW.At(w3, j) + ahead);
            }
            var v0 = Vector256.Load(xb + j);
            var v1 = Vector256.Load(xb + j + 8);
            TW.Load16(w0, j, out var r0, out var q0);
            TW.Load16(w1, j, out var r1, out var q1);
            TW.Load16(w2, j, out var r2, out var q2);
            TW.Load16(w3, j, out var r3, out var q3);
            a0 = Vector256.FusedMultiplyAdd(r0, v0, a0);
            a1 = Vector256.FusedMultiplyAdd(r1, v0, a1);
            a2 = Vector256.FusedMultiplyAdd(r2, v0, a2);
            a3 = Vector256.FusedMultiplyAdd(r3, v0, a3);
            a0 = Vector256.FusedMultiplyAdd(q0, v1, a0);
            a1 = Vector256.FusedMultiplyAdd(q1, v1, a1);
            a2 = Vector256.FusedMultiplyAdd(q2, v1, a2);
            a3 = Vector256.FusedMultiplyAdd(q3, v1, a3);
        }
        for (; j + 8 <= k; j += 8)
        {
            var v0 = Vector256.Load(x0 + j);
            a0 = Vector256.FusedMultiplyAdd(TW.Load(w0, j), v0, a0);
            a1 = Vector256.FusedMultiplyAdd(TW.Load(w1, j), v0, a1);
            a2 = Vector256.FusedMultiplyAdd(TW.Load(w2, j), v0, a2);
            a3 = Vector256.FusedMultiplyAdd(TW.Load(w3, j), v0, a3);
        }
        float s0 = Vector256.Sum(a0), s1 = Vector256.Sum(a1), s2 = Vector256.Sum(a2), s3 = Vector256.Sum(a3);
        for (; j < k; j++)
        {
            s0 += TW.LoadScalar(w0, j) * x0[j];
            s1 += TW.LoadScalar(w1, j) * x0[j];
            s2 += TW.LoadScalar(w2, j) * x0[j];
            s3 += TW.LoadScalar(w3, j) * x0[j];
        }
        Store(job, n, i, s0); Store(job, n + 1, i, s1); Store(job, n + 2, i, s2); Store(job, n + 3, i, s3);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe float Dot<TW>(void* w, int k, float* x) where TW : struct, IWeightLoad
    {
        var acc = Vector256<float>.Zero;
        int j = 0;
        for (; j + 8 <= k; j += 8) acc = Vector256.FusedMultiplyAdd(TW.Load(w, j), Vector256.Load(x + j), acc);
        float s = Vector256.Sum(acc);
        for (; j < k; j++) s += TW.LoadScalar(w, j) * x[j];
        return s;
    }

    /// <summary>How one storage dtype's weights are read as float32.</summary>
    private interface IWeightLoad
    {
        /// <summary>Eight consecutive weights (element offset <c>at</c>).</summary>
        static abstract unsafe Vector256<float> Load(void* w, long at);
        /// <summary>
        /// Sixteen consecutive weights as two vectors, in the element order of <see cref="Job.XBlocks"/>: elements 0-7 and
        /// 8-15, or (bfloat16) the even and the odd elements, which need no shuffle to widen.
        /// </summary>
        static abstract unsafe void Load16(void* w, long at, out Vector256<float> first, out Vector256<float> second);
        static abstract unsafe float LoadScalar(void* w, long at);
        /// <summary>Address of element <c>at</c>.</summary>
        static abstract unsafe void* At(void* w, long at);
        /// <summary>Start of weight row n of a [N, k] matrix.</summary>
        static abstract unsafe void* Row(void* w, int n, int k);
    }

    private struct F32 : IWeightLoad
    {
        public static unsafe Vector256<float> Load(void* w, long at) => Vector256.Load((float*)w + at);
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static unsafe void Load16(void* w, long at, out Vector256<float> first, out Vector256<float> second)
        {
            first = Vector256.Load((float*)w + at);
            second = Vector256.Load((float*)w + at + 8);
        }
        public static unsafe float LoadScalar(void* w, long at) => ((float*)w)[at];
        public static unsafe void* Row(void* w, int n, int k) => (float*)w + (long)n * k;
        public static unsafe void* At(void* w, long at) => (float*)w + at;
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
        /// <summary>Each 32-bit lane holds elements 2l (low half) and 2l + 1 (high half): shifted left, and masked.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static unsafe void Load16(void* w, long at, out Vector256<float> first, out Vector256<float> second)
        {
            var pairs = Vector256.Load((uint*)((ushort*)w + at));
            first = Vector256.ShiftLeft(pairs, 16).AsSingle();
            second = (pairs & Vector256.Create(0xFFFF0000u)).AsSingle();
        }
        public static unsafe float LoadScalar(void* w, long at) => BitConverter.Int32BitsToSingle(((ushort*)w)[at] << 16);
        public static unsafe void* Row(void* w, int n, int k) => (ushort*)w + (long)n * k;
        public static unsafe void* At(void* w, long at) => (ushort*)w + at;
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
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static unsafe void Load16(void* w, long at, out Vector256<float> first, out Vector256<float> second)
        {
            first = Load(w, at);
            second = Load(w, at + 8);
        }
        public static unsafe float LoadScalar(void* w, long at) => ((sbyte*)w)[at];
        public static unsafe void* Row(void* w, int n, int k) => (sbyte*)w + (long)n * k;
        public static unsafe void* At(void* w, long at) => (sbyte*)w + at;
    }

    public void Dispose()
    {
        if (_ownsWeight) _weight.Dispose();
        _scale?.Dispose();
    }
}
