using System.Numerics;

namespace SmoaServe.Engine.Generation;

/// <summary>Whether a row of logits can be sampled from at all.</summary>
public static class LogitsCheck
{
    /// <summary>The message a sequence ends with when its logits are not finite.</summary>
    public const string NonFiniteMessage =
        "the model's output for this request is not finite (NaN or infinite logits): its adapter's update overflows";

    /// <summary>True when every value is finite. x − x is 0 for a finite x and NaN for ±inf or NaN, and NaN survives the sum.</summary>
    public static bool AllFinite(ReadOnlySpan<float> logits)
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated && logits.Length >= Vector<float>.Count)
        {
            var acc = Vector<float>.Zero;
            for (; i <= logits.Length - Vector<float>.Count; i += Vector<float>.Count)
            {
                var v = new Vector<float>(logits.Slice(i, Vector<float>.Count));
                acc += v - v;
            }
            if (float.IsNaN(Vector.Sum(acc))) return false;
        }
        for (; i < logits.Length; i++)
            if (!float.IsFinite(logits[i])) return false;
        return true;
    }
}
