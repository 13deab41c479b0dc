namespace SmoaServe.Engine.Generation;

/// <summary>
/// Text-level stop strings over streamed text. <see cref="Push"/> returns the text that is safe to emit: anything that
/// could still be the start of a stop string is held back until it is either completed (then the output ends just
/// before the stop string) or ruled out.
/// </summary>
public sealed class StopStringMatcher
{
    private readonly string[] _stops;
    private string _pending = "";

    public bool Stopped { get; private set; }

    public StopStringMatcher(IEnumerable<string> stopStrings) => _stops = stopStrings.Where(s => s.Length > 0).Distinct().ToArray();

    /// <returns>text that became safe to emit</returns>
    public string Push(string piece)
    {
        if (Stopped) return "";
        _pending += piece;
        int stopAt = FirstStop(_pending);
        if (stopAt >= 0)
        {
            Stopped = true;
            string emit = _pending[..stopAt];
            _pending = "";
            return emit;
        }
        int hold = LongestPartialStop(_pending);
        string safe = _pending[..^hold];
        _pending = _pending[^hold..];
        return safe;
    }

    /// <summary>At the end of generation: whatever was held back (it never completed a stop string).</summary>
    public string Flush()
    {
        string rest = Stopped ? "" : _pending;
        _pending = "";
        return rest;
    }

    private int FirstStop(string text)
    {
        int best = -1;
        foreach (var s in _stops)
        {
            int i = text.IndexOf(s, StringComparison.Ordinal);
            if (i >= 0 && (best < 0 || i < best)) best = i;
        }
        return best;
    }

    /// <summary>Length of the longest suffix of <paramref name="text"/> that is a proper prefix of a stop string.</summary>
    private int LongestPartialStop(string text)
    {
        int hold = 0;
        foreach (var s in _stops)
            for (int len = Math.Min(s.Length - 1, text.Length); len > hold; len--)
                if (text.AsSpan(text.Length - len).SequenceEqual(s.AsSpan(0, len))) { hold = len; break; }
        return hold;
    }
}
