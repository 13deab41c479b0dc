using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace SmoaServe.Text.Tokenizers;

/// <summary>
/// A pre-tokenizer regex that matches by code point, as the Rust (Oniguruma) engine HF uses does.
/// .NET matches UTF-16 units, so \p{L} misses letters outside the BMP and an emoji splits in two; the text is
/// therefore matched through a proxy string holding one BMP character of the same Unicode category per code
/// point, and the match positions are mapped back.
/// </summary>
internal sealed class CodePointRegex(string pattern)
{
    readonly Regex _regex = new(pattern, RegexOptions.CultureInvariant | RegexOptions.Compiled);

    /// <summary>(start, length) in UTF-16 units of <paramref name="text"/> of each match, in order.</summary>
    public List<(int Start, int Length)> Matches(string text)
    {
        var (proxy, offsets) = Proxy(text);
        var result = new List<(int, int)>();
        foreach (Match m in _regex.Matches(proxy))
        {
            if (m.Length == 0) continue;
            var start = offsets[m.Index];
            result.Add((start, offsets[m.Index + m.Length] - start));
        }
        return result;
    }

    /// <summary>The BMP-only proxy of <paramref name="text"/> and, per proxy index (plus the end), the offset in <paramref name="text"/>.</summary>
    static (string Proxy, int[] Offsets) Proxy(string text)
    {
        var hasSurrogates = false;
        foreach (var c in text) if (char.IsSurrogate(c)) { hasSurrogates = true; break; }
        if (!hasSurrogates)
        {
            var identity = new int[text.Length + 1];
            for (var i = 0; i <= text.Length; i++) identity[i] = i;
            return (text, identity);
        }
        var sb = new StringBuilder(text.Length);
        var offsets = new List<int>(text.Length + 1);
        for (var i = 0; i < text.Length;)
        {
            offsets.Add(i);
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                sb.Append(Representative(CharUnicodeInfo.GetUnicodeCategory(char.ConvertToUtf32(text[i], text[i + 1]))));
                i += 2;
            }
            else
            {
                sb.Append(char.IsSurrogate(text[i]) ? '\u00A9' : text[i]);   // a lone surrogate counts as a symbol
                i++;
            }
        }
        offsets.Add(text.Length);
        return (sb.ToString(), offsets.ToArray());
    }

    /// <summary>A non-ASCII BMP character of category <paramref name="c"/> (never a letter the (?i:'s|'t...) contractions match).</summary>
    static char Representative(UnicodeCategory c) => c switch
    {
        UnicodeCategory.UppercaseLetter => '\u00C0',
        UnicodeCategory.LowercaseLetter => '\u00E0',
        UnicodeCategory.TitlecaseLetter => '\u01C5',
        UnicodeCategory.ModifierLetter => '\u02B0',
        UnicodeCategory.OtherLetter => '\u4E00',
        UnicodeCategory.NonSpacingMark => '\u0300',
        UnicodeCategory.SpacingCombiningMark => '\u0903',
        UnicodeCategory.EnclosingMark => '\u20DD',
        UnicodeCategory.DecimalDigitNumber => '\u0660',
        UnicodeCategory.LetterNumber => '\u2160',
        UnicodeCategory.OtherNumber => '\u00B2',
        UnicodeCategory.MathSymbol => '\u00B1',
        UnicodeCategory.CurrencySymbol => '\u00A2',
        UnicodeCategory.ModifierSymbol => '\u02C2',
        UnicodeCategory.ConnectorPunctuation => '\u203F',
        UnicodeCategory.DashPunctuation => '\u2010',
        UnicodeCategory.OpenPunctuation => '\u2045',
        UnicodeCategory.ClosePunctuation => '\u2046',
        UnicodeCategory.InitialQuotePunctuation => '\u00AB',
        UnicodeCategory.FinalQuotePunctuation => '\u00BB',
        UnicodeCategory.OtherPunctuation => '\u00A1',
        UnicodeCategory.Format => '\u200B',
        UnicodeCategory.PrivateUse => '\uE000',
        UnicodeCategory.OtherNotAssigned => '\u0378',
        _ => '\u00A9',                                                     // OtherSymbol and anything else
    };
}
