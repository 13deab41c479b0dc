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
        Enabled && x.dtype == ScalarType.Float32 && x.device.type == DeviceType.CPU && !x.requires_grad && !torch.is_grad_enabled()
        && x.shape[^1] == width && x.NumberOfElements / width <= MaxRows;

    internal static unsafe float* Pointer(Tensor t) => (float*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(t.bytes));

    /// <summary>LlamaRMSNorm over the last dimension: weight · (x / sqrt(mean(x²) + eps)). x [..., H] → new [..., H].</summary>
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
    public static unsafe Tensor SiluMul(Tensor gu)
    {
        var input = gu.is_contiguous() ? gu : gu.contiguous();
        int f = (int)(gu.shape[^1] / 2);
        long rows = input.NumberOfElements / (2L * f);
        var shape = gu.shape.ToArray();
        shape[^1] = f;
        var y = torch.empty(shape, ScalarType.Float32);
        float* g = Pointer(input), yp = Pointer(y);
        for (long r = 0; r < rows; r++)
        {
            float* gate = g + r * 2 * f, up = gate + f, o = yp + r * f;
            for (int i = 0; i < f; i++)
            {
                float a = gate[i];
                o[i] = a / (1f + MathF.Exp(-a)) * up[i];        // silu(a) = a · sigmoid(a)
            }
        }
        if (!ReferenceEquals(input, gu)) input.Dispose();
        return y;
    }

    /// <summary>Where one decode row's keys and values live: its slot and the position of its new token.</summary>
    public readonly record struct RowPlace(int Slot, int Position);

    /// <summary>
    /// Single-token attention of B rows. For row b: RoPE on its q and k heads (cos/sin of its position), k and v
    /// written at [slot, :, position] of the layer's cache, then for every query head h (KV head h / G) softmax(q·Kᵀ /
    /// √D) over the row's own keys 0..position, times V. Keys past the row's position and other slots are never read.
    /// </summary>
    /// <param name="qkv">[B, 1, (NH + 2·NKV)·D]: q, k, v side by side (the fused projection's output)</param>
    /// <param name="cos">[B, 1, D] float32</param>
    /// <param name="sin">[B, 1, D] float32</param>
    /// <param name="keys">the layer's key cache [S, NKV, maxSeq, D]</param>
    /// <param name="values">the layer's value cache [S, NKV, maxSeq, D]</param>
    /// <returns>[B, 1, NH·D]: the heads' outputs side by side</returns>
    public static unsafe Tensor Attend(Tensor qkv, Tensor cos, Tensor sin, Tensor keys, Tensor values, IReadOnlyList<RowPlace> rows, int numHeads, int numKvHeads, int headDim)
    {
        int b = rows.Count, nh = numHeads, nkv = numKvHeads, d = headDim;
        long width = (long)(nh + 2 * nkv) * d;
        if (qkv.NumberOfElements != b * width || cos.NumberOfElements != (long)b * d || sin.NumberOfElements != (long)b * d)
            throw new ArgumentException($"qkv [{string.Join(", ", qkv.shape)}] / cos / sin do not match {b} rows of {nh}+2·{nkv} heads of {d}");
        if (keys.dim() != 4 || keys.shape[1] != nkv || keys.shape[3] != d || !keys.is_contiguous() || !values.is_contiguous()
            || keys.dtype != ScalarType.Float32 || values.dtype != ScalarType.Float32 || !keys.shape.SequenceEqual(values.shape))
            throw new ArgumentException("the KV cache must be contiguous float32 [slots, NKV, maxSeq, D]");
        int slots = (int)keys.shape[0], maxSeq = (int)keys.shape[2];
        foreach (var r in rows)
            if ((uint)r.Slot >= (uint)slots || (uint)r.Position >= (uint)maxSeq)
                throw new ArgumentOutOfRangeException(nameof(rows), $"slot {r.Slot} position {r.Position} is outside the cache ({slots} slots of {maxSeq})");

        var q = qkv.is_contiguous() ? qkv : qkv.contiguous();
        var c = cos.is_contiguous() ? cos : cos.contiguous();
        var s = sin.is_contiguous() ? sin : sin.contiguous();
        var output = torch.empty([b, 1, (long)nh * d], ScalarType.Float32);
        var job = new AttendJob
        {
            Qkv = Pointer(q), Cos = Pointer(c), Sin = Pointer(s), Keys = Pointer(keys), Values = Pointer(values), Output = Pointer(output),
            Rows = rows, Nh = nh, Nkv = nkv, D = d, MaxSeq = maxSeq, Width = width,
        };
        // first every row's new k and v into the cache (rows never share a slot), then attention per (row, KV head)
        for (int i = 0; i < b; i++) WriteKv(job, i);
        long work = rows.Sum(r => (long)(r.Position + 1)) * nh * d;
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
        public float* Qkv, Cos, Sin, Keys, Values, Output;
        public IReadOnlyList<RowPlace> Rows;
        public int Nh, Nkv, D, MaxSeq;
        public long Width;

        /// <summary>Start of [slot, kvHead, position, :] in a cache.</summary>
        public readonly float* At(float* store, int slot, int kvHead, int position) => store + (((long)slot * Nkv + kvHead) * MaxSeq + position) * D;
    }

    private static unsafe void WriteKv(in AttendJob job, int row)
    {
        var place = job.Rows[row];
        int d = job.D;
        float* q = job.Qkv + row * job.Width, cos = job.Cos + (long)row * d, sin = job.Sin + (long)row * d;
        for (int g = 0; g < job.Nkv; g++)
        {
            Rotate(q + (long)(job.Nh + g) * d, cos, sin, job.At(job.Keys, place.Slot, g, place.Position), d);
            new ReadOnlySpan<float>(q + (long)(job.Nh + job.Nkv + g) * d, d).CopyTo(new Span<float>(job.At(job.Values, place.Slot, g, place.Position), d));
        }
    }

    /// <summary>y = x·cos + rotate_half(x)·sin, rotate_half([x₁, x₂]) = [-x₂, x₁] (HF's convention, halves not pairs).</summary>
    private static unsafe void Rotate(float* x, float* cos, float* sin, float* y, int d)
    {
        int half = d / 2;
        for (int i = 0; i < half; i++) y[i] = x[i] * cos[i] + -x[i + half] * sin[i];
        for (int i = half; i < d; i++) y[i] = x[i] * cos[i] + x[i - half] * sin[i];
    }

    /// <summary>The G query heads of KV head <paramref name="g"/> for one row: scores, softmax in float32, weighted values.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void AttendGroup(in AttendJob job, int row, int g)
    {
        var place = job.Rows[row];
        int d = job.D, length = place.Position + 1, groups = job.Nh / job.Nkv;
        float scale = (float)(1.0 / Math.Sqrt(d));
        float* q = job.Qkv + row * job.Width, cos = job.Cos + (long)row * d, sin = job.Sin + (long)row * d;
        float* keys = job.At(job.Keys, place.Slot, g, 0), values = job.At(job.Values, place.Slot, g, 0);
        float[]? rented = length > 2048 ? ArrayPool<float>.Shared.Rent(length) : null;
        Span<float> scoreSpan = rented is null ? stackalloc float[length] : rented;
        float* rotated = stackalloc float[d];
        fixed (float* scores = scoreSpan)
        {
            for (int hi = 0; hi < groups; hi++)
            {
                int h = g * groups + hi;
                Rotate(q + (long)h * d, cos, sin, rotated, d);
                float max = float.NegativeInfinity;
                for (int j = 0; j < length; j++)
                {
                    float sc = Dot(rotated, keys + (long)j * d, d) * scale;
                    scores[j] = sc;
                    if (sc > max) max = sc;
                }
                float sum = 0;
                for (int j = 0; j < length; j++) { float e = MathF.Exp(scores[j] - max); scores[j] = e; sum += e; }
                float* o = job.Output + ((long)row * job.Nh + h) * d;
                new Span<float>(o, d).Clear();
                for (int j = 0; j < length; j++) Axpy(scores[j] / sum, values + (long)j * d, o, d);
            }
        }
        if (rented is not null) ArrayPool<float>.Shared.Return(rented);
    }

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
    private static unsafe void Axpy(float a, float* x, float* y, int n)
    {
        var va = Vector256.Create(a);
        int i = 0;
        for (; i + 8 <= n; i += 8) Vector256.Store(Vector256.Load(y + i) + va * Vector256.Load(x + i), y + i);
        for (; i < n; i++) y[i] += a * x[i];
    }
}
