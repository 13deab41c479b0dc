using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Model;

/// <summary>
/// The small parts of a float32 CPU decode step written as loops over the tensors' memory: RMSNorm, RoPE with the KV
/// cache write and single-token attention over the cache, and silu(gate)·up. A decode step of a small model spends as
/// long dispatching these as a libtorch operation each (~40 per layer, each with a tensor allocation) as it spends
/// streaming weights; here each is one call per layer. The arithmetic is Hugging Face's, in float32, with products
/// rounded before they are added (no fused multiply-add where HF has none); only sums run in a different order, as
/// with any GEMM. Anything that needs a gradient, has more than <see cref="MaxRows"/> rows or is not float32 on the
/// CPU takes the libtorch path.
/// </summary>
public static class CpuDecode
{
    /// <summary>Rows (tokens) up to which the loops are used: decode batches, not prefill.</summary>
    public const int MaxRows = 64;

    /// <summary>Off: every decode step goes through the libtorch operations (for side-by-side measurements).</summary>
    public static bool Enabled { get; set; } = true;

    /// <summary>x is a float32 CPU tensor of at most <see cref="MaxRows"/> rows of width <paramref name="width"/>, outside autograd.</summary>
    public static bool Applies(Tensor x, long width) =>
        Enabled && x.dtype == ScalarType.Float32 && x.device_type == DeviceType.CPU && !x.requires_grad && !torch.is_grad_enabled()
        && x.size(-1) == width && x.NumberOfElements / width <= MaxRows;

    internal static unsafe float* Pointer(Tensor t) => (float*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(t.bytes));

    /// <summary>LlamaRMSNorm over the last dimension: weight · (x / sqrt(mean(x²) + eps)). x [..., H] → new [..., H].</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static unsafe Tensor RmsNorm(Tensor x, Tensor weight, double eps)
    {
        var input = x.is_contiguous() ? x : x.contiguous();
        int h = (int)weight.shape[0];
        long rows = input.NumberOfElements / h;
        var y = torch.empty(x.shape, ScalarType.Float32);
        float* xp = Pointer(input), yp = Pointer(y), w = Pointer(weight);
        for (long r = 0; r < rows; r++) RmsNormRow(xp + r * h, w, yp + r * h, h, (float)eps);
        if (!ReferenceEquals(input, x)) input.Dispose();
        return y;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void RmsNormRow(float* x, float* w, float* y, int h, float eps)
    {
        var acc = Vector256<float>.Zero;
        int i = 0;
        for (; i + 8 <= h; i += 8) { var v = Vector256.Load(x + i); acc += v * v; }
        float sum = Vector256.Sum(acc);
        for (; i < h; i++) sum += x[i] * x[i];
        float inverse = 1f / MathF.Sqrt(sum / h + eps);      // rsqrt(mean(x²) + eps)
        var vi = Vector256.Create(inverse);
        for (i = 0; i + 8 <= h; i += 8) Vector256.Store(Vector256.Load(w + i) * (Vector256.Load(x + i) * vi), y + i);
        for (; i < h; i++) y[i] = w[i] * (x[i] * inverse);
    }

    /// <summary>silu(gate) · up for gu = [..., 2F] holding gate and up side by side → new [..., F].</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static unsafe Tensor SiluMul(Tensor gu)
    {
        var input = gu.is_contiguous() ? gu : gu.contiguous();
        int f = (int)(gu.shape[^1] / 2);
        long rows = input.NumberOfElements / (2L * f);
        var shape = gu.shape.ToArray();
        shape[^1] = f;
        var y = torch.empty(shape, ScalarType.Float32);
        float* g = Pointer(input), yp = Pointer(y);
        for (long r = 0; r < rows; r++) SiluMulRow(g + r * 2 * f, g + r * 2 * f + f, yp + r * f, f);
        if (!ReferenceEquals(input, gu)) input.Dispose();
        return y;
    }

    /// <summary>o = silu(gate) · up = gate / (1 + exp(-gate)) · up.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void SiluMulRow(float* gate, float* up, float* o, int f)
    {
        int i = 0;
        for (; i + 8 <= f; i += 8)
        {
            var a = Vector256.Load(gate + i);
            Vector256.Store(a / (Vector256<float>.One + Vector256.Exp(-a)) * Vector256.Load(up + i), o + i);
        }
        for (; i < f; i++) o[i] = gate[i] / (1f + MathF.Exp(-gate[i])) * up[i];
    }

    /// <summary>Where one decode row's keys and values live: its slot and the position of its new token.</summary>
    public readonly record struct RowPlace(int Slot, int Position);

    /// <summary>
    /// One layer's KV cache as memory: keys and values [slots, NKV, maxSeq, D] float32, contiguous, on the CPU. The
    /// shapes are checked once here, so the per-layer call does not ask libtorch for them again.
    /// </summary>
    public readonly unsafe struct CacheLayer
    {
        public readonly float* Keys, Values;
        public readonly int Slots, KvHeads, MaxSequence, HeadDim;

        private CacheLayer(float* keys, float* values, int slots, int kvHeads, int maxSequence, int headDim)
        {
            Keys = keys;
            Values = values;
            (Slots, KvHeads, MaxSequence, HeadDim) = (slots, kvHeads, maxSequence, headDim);
        }

        /// <summary>The memory of <paramref name="keys"/> and <paramref name="values"/>, which must stay alive (and in place) while it is used.</summary>
        public static CacheLayer Of(Tensor keys, Tensor values)
        {
            if (keys.dim() != 4 || !keys.shape.SequenceEqual(values.shape) || keys.dtype != ScalarType.Float32 || values.dtype != ScalarType.Float32
                || keys.device_type != DeviceType.CPU || values.device_type != DeviceType.CPU || !keys.is_contiguous() || !values.is_contiguous())
                throw new ArgumentException("the KV cache must be contiguous float32 [slots, NKV, maxSeq, D] on the CPU");
            var shape = keys.shape;
            if (shape.Any(n => n > int.MaxValue)) throw new ArgumentException("the KV cache is too large");
            return new CacheLayer(Pointer(keys), Pointer(values), (int)shape[0], (int)shape[1], (int)shape[2], (int)shape[3]);
        }

        /// <summary>Start of [slot, kvHead, position, :] in <paramref name="store"/> (<see cref="Keys"/> or <see cref="Values"/>).</summary>
        public float* At(float* store, int slot, int kvHead, int position) => store + (((long)slot * KvHeads + kvHead) * MaxSequence + position) * HeadDim;
    }

    /// <summary>
    /// Single-token attention of B rows. For row b: RoPE on its q and k heads (cos/sin of its position), k and v
    /// written at [slot, :, position] of the layer's cache, then for every query head h (KV head h / G) softmax(q·Kᵀ /
    /// √D) over the row's own keys 0..position, times V. Keys past the row's position and other slots are never read.
    /// </summary>
    /// <param name="qkv">[B, 1, (NH + 2·NKV)·D]: q, k, v side by side (the fused projection's output)</param>
    /// <param name="cos">[B, 1, D] float32</param>
    /// <param name="sin">[B, 1, D] float32</param>
    /// <param name="cache">the layer's KV cache</param>
    /// <returns>[B, 1, NH·D]: the heads' outputs side by side</returns>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static unsafe Tensor Attend(Tensor qkv, Tensor cos, Tensor sin, CacheLayer cache, IReadOnlyList<RowPlace> rows, int numHeads)
    {
        int b = rows.Count, nh = numHeads, nkv = cache.KvHeads, d = cache.HeadDim;
        long width = (long)(nh + 2 * nkv) * d;
        if (nh % nkv != 0 || qkv.NumberOfElements != b * width || cos.NumberOfElements != (long)b * d || sin.NumberOfElements != (long)b * d)
            throw new ArgumentException($"qkv [{string.Join(", ", qkv.shape)}] / cos / sin do not match {b} rows of {nh}+2·{nkv} heads of {d}");
        for (int i = 0; i < b; i++)
            if ((uint)rows[i].Slot >= (uint)cache.Slots || (uint)rows[i].Position >= (uint)cache.MaxSequence)
                throw new ArgumentOutOfRangeException(nameof(rows), $"slot {rows[i].Slot} position {rows[i].Position} is outside the cache ({cache.Slots} slots of {cache.MaxSequence})");

        var q = qkv.is_contiguous() ? qkv : qkv.contiguous();
        var c = cos.is_contiguous() ? cos : cos.contiguous();
        var s = sin.is_contiguous() ? sin : sin.contiguous();
        var output = torch.empty([b, 1, (long)nh * d], ScalarType.Float32);
        var job = new AttendJob { Qkv = Pointer(q), Cos = Pointer(c), Sin = Pointer(s), Output = Pointer(output), Cache = cache, Rows = rows, Nh = nh, Width = width };
        // first every row's new k and v into the cache (rows never share a slot), then attention per (row, KV head)
        long work = 0;
        for (int i = 0; i < b; i++)
        {
            WriteKv(job, i);
            work += (long)(rows[i].Position + 1) * nh * d;
        }
        int items = b * nkv;
        if (work < 1 << 18 || items == 1)
            for (int item = 0; item < items; item++) AttendGroup(job, item / nkv, item % nkv);
        else
        {
            int next = -1;
            CpuWorkers.For(torch.get_num_threads()).Run(_ =>
            {
                for (int item; (item = Interlocked.Increment(ref next)) < items;) AttendGroup(job, item / nkv, item % nkv);
            });
        }
        if (!ReferenceEquals(q, qkv)) q.Dispose();
        if (!ReferenceEquals(c, cos)) c.Dispose();
        if (!ReferenceEquals(s, sin)) s.Dispose();
        return output;
    }

    private unsafe struct AttendJob
    {
        public float* Qkv, Cos, Sin, Output;
        public CacheLayer Cache;
        public IReadOnlyList<RowPlace> Rows;
        public int Nh;
        public long Width;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void WriteKv(in AttendJob job, int row)
    {
        var place = job.Rows[row];
        var cache = job.Cache;
        int d = cache.HeadDim, nkv = cache.KvHeads;
        float* q = job.Qkv + row * job.Width, cos = job.Cos + (long)row * d, sin = job.Sin + (long)row * d;
        for (int g = 0; g < nkv; g++)
        {
            Rotate(q + (long)(job.Nh + g) * d, cos, sin, cache.At(cache.Keys, place.Slot, g, place.Position), d);
            new ReadOnlySpan<float>(q + (long)(job.Nh + nkv + g) * d, d).CopyTo(new Span<float>(cache.At(cache.Values, place.Slot, g, place.Position), d));
        }
    }

    /// <summary>y = x·cos + rotate_half(x)·sin, rotate_half([x₁, x₂]) = [-x₂, x₁] (HF's convention, halves not pairs).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Rotate(float* x, float* cos, float* sin, float* y, int d)
    {
        int half = d / 2, i = 0;
        for (; i + 8 <= half; i += 8)
        {
            var x1 = Vector256.Load(x + i);
            var x2 = Vector256.Load(x + half + i);
            Vector256.Store(x1 * Vector256.Load(cos + i) + -x2 * Vector256.Load(sin + i), y + i);
            Vector256.Store(x2 * Vector256.Load(cos + half + i) + x1 * Vector256.Load(sin + half + i), y + half + i);
        }
        for (; i < half; i++)
        {
            y[i] = x[i] * cos[i] + -x[i + half] * sin[i];
            y[half + i] = x[half + i] * cos[half + i] + x[i] * sin[half + i];
        }
    }

    /// <summary>
    /// The G query heads of KV head <paramref name="g"/> for one row, together: each key and value row is read once for
    /// all G heads. Scores q·k / √D, softmax in float32, then the weighted sum of the values.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void AttendGroup(in AttendJob job, int row, int g)
    {
        var place = job.Rows[row];
        var cache = job.Cache;
        int d = cache.HeadDim, length = place.Position + 1, groups = job.Nh / cache.KvHeads;
        float scale = (float)(1.0 / Math.Sqrt(d));
        float* q = job.Qkv + row * job.Width, cos = job.Cos + (long)row * d, sin = job.Sin + (long)row * d;
        float* keys = cache.At(cache.Keys, place.Slot, g, 0), values = cache.At(cache.Values, place.Slot, g, 0);
        int scoreCount = groups * length;
        float[]? rented = scoreCount > 4096 ? ArrayPool<float>.Shared.Rent(scoreCount) : null;
        Span<float> scoreSpan = rented is null ? stackalloc float[scoreCount] : rented;
        float* rotated = stackalloc float[groups * d];      // [G, D]: the group's query heads after RoPE
        for (int hi = 0; hi < groups; hi++) Rotate(q + (long)(g * groups + hi) * d, cos, sin, rotated + hi * d, d);
        fixed (float* scores = scoreSpan)                    // [G, length]
        {
            for (int j = 0; j < length; j++)
            {
                float* key = keys + (long)j * d;
                for (int hi = 0; hi < groups; hi++) scores[hi * length + j] = Dot(rotated + hi * d, key, d) * scale;
            }
            for (int hi = 0; hi < groups; hi++)
            {
                float* p = scores + hi * length;
                float max = float.NegativeInfinity;
                for (int j = 0; j < length; j++) max = MathF.Max(max, p[j]);
                float sum = SoftmaxNumerators(p, length, max);
                for (int j = 0; j < length; j++) p[j] /= sum;
                new Span<float>(job.Output + ((long)row * job.Nh + g * groups + hi) * d, d).Clear();
            }
            for (int j = 0; j < length; j++)
            {
                float* value = values + (long)j * d;
                for (int hi = 0; hi < groups; hi++)
                    Axpy(scores[hi * length + j], value, job.Output + ((long)row * job.Nh + g * groups + hi) * d, d);
            }
        }
        if (rented is not null) ArrayPool<float>.Shared.Return(rented);
    }

    /// <summary>scores[j] = exp(scores[j] - max); returns their sum.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe float SoftmaxNumerators(float* scores, int n, float max)
    {
        var vmax = Vector256.Create(max);
        var acc = Vector256<float>.Zero;
        int j = 0;
        for (; j + 8 <= n; j += 8)
        {
            var e = Vector256.Exp(Vector256.Load(scores + j) - vmax);
            Vector256.Store(e, scores + j);
            acc += e;
        }
        float sum = Vector256.Sum(acc);
        for (; j < n; j++) { float e = MathF.Exp(scores[j] - max); scores[j] = e; sum += e; }
        return sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe float Dot(float* a, float* b, int n)
    {
        var acc = Vector256<float>.Zero;
        int i = 0;
        for (; i + 8 <= n; i += 8) acc += Vector256.Load(a + i) * Vector256.Load(b + i);
        float s = Vector256.Sum(acc);
        for (; i < n; i++) s += a[i] * b[i];
        return s;
    }

    /// <summary>y += a · x.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Axpy(float a, float* x, float* y, int n)
    {
        var va = Vector256.Create(a);
        int i = 0;
        for (; i + 8 <= n; i += 8) Vector256.Store(Vector256.Load(y + i) + va * Vector256.Load(x + i), y + i);
        for (; i < n; i++) y[i] += a * x[i];
    }
}
