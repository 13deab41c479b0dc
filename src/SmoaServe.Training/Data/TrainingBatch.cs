using SmoaServe.Engine.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Training.Data;

/// <summary>
/// One forward's worth of training rows on the model's device: token ids, how tokens may attend, and which positions'
/// predictions are scored (Hugging Face causal-LM convention: logits at t predict the label at t+1).
/// Rows are right-padded: under the causal mask a padded position comes after every real one, so it cannot affect
/// them, and the scored positions never include it. Packed rows (several examples per row) carry a block-diagonal
/// mask and positions that restart at each example, so examples sharing a row cannot see each other either.
/// </summary>
public sealed class TrainingBatch : IDisposable
{
    /// <summary>int64 [B, T].</summary>
    public Tensor InputIds { get; }
    /// <summary>int64 [B, T] position of each token, or null for 0..T-1 in every row.</summary>
    public Tensor? Positions { get; }
    /// <summary>bool [B, 1, T, T] (true = may attend), or null for the plain causal mask.</summary>
    public Tensor? Mask { get; }
    /// <summary>int64 [n]: flat index b·T + t of every scored position.</summary>
    public Tensor LossPositions { get; }
    /// <summary>int64 [n]: the token each scored position must predict.</summary>
    public Tensor LossTargets { get; }

    /// <summary>Bound on B·T·T of a packed or explicit mask (one byte each on the device).</summary>
    public const long MaxMaskElements = 1L << 32;

    public int Rows { get; }
    public int Length { get; }
    /// <summary>Real (non-padding) tokens.</summary>
    public long Tokens { get; }
    /// <summary>Scored predictions (n).</summary>
    public long ScoredCount { get; }

    /// <param name="segments">packed rows: the example index of every token (padding -1); tokens attend causally within their segment</param>
    /// <param name="keyMask">other masks: 1 where a token may be attended to (causally; every token also attends to itself)</param>
    private TrainingBatch(long[] ids, long[]? positions, long[]? segments, long[]? keyMask, List<long> lossPositions, List<long> lossTargets,
        int rows, int length, long tokens, Device device)
    {
        if ((segments is not null || keyMask is not null) && (long)rows * length * length > MaxMaskElements)
            throw new ArgumentException($"an attention mask for {rows} rows of {length} tokens would hold {(long)rows * length * length:N0} elements (at most {MaxMaskElements:N0}); use shorter rows or fewer per batch");
        using var scope = NewDisposeScope();
        InputIds = tensor(ids, dtype: ScalarType.Int64).view(rows, length).to(device).DetachFromDisposeScope();
        Positions = positions is null ? null : tensor(positions, dtype: ScalarType.Int64).view(rows, length).to(device).DetachFromDisposeScope();
        if (segments is not null || keyMask is not null)
        {
            var causal = ones([length, length], ScalarType.Bool, device).tril();                        // [T, T]: key k ≤ query q
            Tensor allowed;
            if (segments is not null)
            {
                var seg = tensor(segments, dtype: ScalarType.Int64).view(rows, length).to(device);       // [B, T]
                allowed = seg.unsqueeze(2).eq(seg.unsqueeze(1)).logical_and(causal);                     // [B, T, T]
            }
            else
            {
                var keys = tensor(keyMask!, dtype: ScalarType.Int64).view(rows, 1, length).to(device).eq(1);   // [B, 1, T]
                allowed = keys.logical_or(eye(length, dtype: ScalarType.Bool, device: device)).logical_and(causal);
            }
            Mask = allowed.unsqueeze(1).DetachFromDisposeScope();                                        // [B, 1, T, T]
        }
        LossPositions = tensor(lossPositions.ToArray(), dtype: ScalarType.Int64).to(device).DetachFromDisposeScope();
        LossTargets = tensor(lossTargets.ToArray(), dtype: ScalarType.Int64).to(device).DetachFromDisposeScope();
        Rows = rows;
        Length = length;
        Tokens = tokens;
        ScoredCount = lossPositions.Count;
    }

    /// <summary>One example per row, right-padded with <paramref name="padId"/> to the longest.</summary>
    public static TrainingBatch Padded(IReadOnlyList<TokenizedExample> examples, Device device, int padId = 0)
    {
        if (examples.Count == 0) throw new ArgumentException("a batch needs at least one example");
        int length = examples.Max(e => e.Ids.Length);
        var ids = new long[(long)examples.Count * length];
        Array.Fill(ids, padId);
        var lossPositions = new List<long>();
        var lossTargets = new List<long>();
        long tokens = 0;
        for (int b = 0; b < examples.Count; b++)
        {
            var e = examples[b];
            long rowStart = (long)b * length;
            for (int t = 0; t < e.Ids.Length; t++) ids[rowStart + t] = e.Ids[t];
            AddScored(e, rowStart, lossPositions, lossTargets);
            tokens += e.Ids.Length;
        }
        return new TrainingBatch(ids, null, null, null, lossPositions, lossTargets, examples.Count, length, tokens, device);
    }

    /// <summary>
    /// Several examples per row, one after another, rows right-padded to the longest row. Each example attends only to
    /// itself (block-diagonal causal mask) and its positions start at 0, as if it were alone.
    /// </summary>
    public static TrainingBatch Packed(IReadOnlyList<IReadOnlyList<TokenizedExample>> rows, Device device, int padId = 0)
    {
        if (rows.Count == 0 || rows.Any(r => r.Count == 0)) throw new ArgumentException("a packed batch needs rows of at least one example");
        int length = rows.Max(r => r.Sum(e => e.Ids.Length));
        long cells = (long)rows.Count * length;
        var ids = new long[cells];
        Array.Fill(ids, padId);
        var positions = new long[cells];
        var segment = new long[cells];
        Array.Fill(segment, -1);   // padding: its own segment (attends to earlier padding only)
        var lossPositions = new List<long>();
        var lossTargets = new List<long>();
        long tokens = 0;
        for (int b = 0; b < rows.Count; b++)
        {
            long rowStart = (long)b * length;
            int offset = 0;
            for (int s = 0; s < rows[b].Count; s++)
            {
                var e = rows[b][s];
                for (int t = 0; t < e.Ids.Length; t++)
                {
                    ids[rowStart + offset + t] = e.Ids[t];
                    positions[rowStart + offset + t] = t;
                    segment[rowStart + offset + t] = s;
                }
                AddScored(e, rowStart + offset, lossPositions, lossTargets);
                offset += e.Ids.Length;
                tokens += e.Ids.Length;
            }
            for (int t = offset; t < length; t++) positions[rowStart + t] = t - offset;
        }
        return new TrainingBatch(ids, positions, segment, null, lossPositions, lossTargets, rows.Count, length, tokens, device);
    }

    /// <summary>
    /// A batch given as tensors, as in Hugging Face: input_ids, attention_mask (1 = real token), labels (-100 = not
    /// scored) all [B, T]. Right-padded rows use the causal mask; any other attention mask is applied as given
    /// (each position also attends to itself, so no row is empty), with positions 0..T-1.
    /// </summary>
    public static TrainingBatch FromTensors(Tensor inputIds, Tensor attentionMask, Tensor labels, int vocabSize, Device device)
    {
        if (inputIds.dim() != 2 || !attentionMask.shape.SequenceEqual(inputIds.shape) || !labels.shape.SequenceEqual(inputIds.shape))
            throw new InvalidDataException($"input_ids, attention_mask and labels must all be [B, T] (got [{string.Join(", ", inputIds.shape)}], [{string.Join(", ", attentionMask.shape)}], [{string.Join(", ", labels.shape)}])");
        int rows = (int)inputIds.shape[0], length = (int)inputIds.shape[1];
        if (rows == 0 || length == 0) throw new InvalidDataException("the batch is empty");
        long[] ids = Longs(inputIds), mask = Longs(attentionMask), labelValues = Longs(labels);
        foreach (long id in ids)
            if (id < 0 || id >= vocabSize) throw new InvalidDataException($"input_ids holds {id}, outside the vocabulary (0..{vocabSize - 1})");
        foreach (long m in mask)
            if (m is not (0 or 1)) throw new InvalidDataException($"attention_mask holds {m}; it must be 0 or 1");

        var lossPositions = new List<long>();
        var lossTargets = new List<long>();
        bool rightPadded = true;
        long tokens = 0;
        for (int b = 0; b < rows; b++)
        {
            long rowStart = (long)b * length;
            int real = 0;
            while (real < length && mask[rowStart + real] == 1) real++;
            for (int t = real; t < length; t++) if (mask[rowStart + t] == 1) rightPadded = false;
            if (real == 0) rightPadded = false;
            tokens += Enumerable.Range(0, length).Count(t => mask[rowStart + t] == 1);
            for (int t = 0; t + 1 < length; t++)
            {
                long label = labelValues[rowStart + t + 1];
                if (label == -100) continue;
                if (label < 0 || label >= vocabSize) throw new InvalidDataException($"labels holds {label}; labels must be token ids or -100");
                lossPositions.Add(rowStart + t);
                lossTargets.Add(label);
            }
        }
        return new TrainingBatch(ids, null, null, rightPadded ? null : mask, lossPositions, lossTargets, rows, length, tokens, device);

        static long[] Longs(Tensor t)
        {
            using var l = t.to(ScalarType.Int64).cpu().contiguous();
            return l.data<long>().ToArray();
        }
    }

    /// <summary>What the model's forward needs for this batch: rotary cos/sin of the positions, the mask, the hook.</summary>
    public ForwardState State(LlamaModel model, IAdapterBatch? hook)
    {
        var positions = Positions ?? arange(Length, dtype: ScalarType.Int64, device: model.Device).unsqueeze(0).expand(Rows, Length);
        var (cos, sin) = model.Rotary.CosSin(positions, model.Dtype);
        return new ForwardState { Cos = cos, Sin = sin, Mask = Mask, IsCausal = Mask is null && Length > 1, Adapters = hook };
    }

    private static void AddScored(TokenizedExample e, long start, List<long> positions, List<long> targets)
    {
        for (int t = 0; t + 1 < e.Ids.Length; t++)
        {
            if (!e.Trained[t + 1]) continue;
            positions.Add(start + t);
            targets.Add(e.Ids[t + 1]);
        }
    }

    public void Dispose()
    {
        InputIds.Dispose(); Positions?.Dispose(); Mask?.Dispose(); LossPositions.Dispose(); LossTargets.Dispose();
    }
}
