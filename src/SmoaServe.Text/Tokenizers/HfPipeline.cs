using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace SmoaServe.Text.Tokenizers;

/// <summary>A text piece during pre-tokenization; AtTextStart marks the piece that begins at offset 0 of the input.</summary>
internal readonly record struct Piece(string Text, bool AtTextStart);

/// <summary>Normalizers, pre-tokenizers, post-processors and decoders of tokenizer.json, the subset Llama-family checkpoints use.</summary>
internal static class HfPipeline
{
    // ---------------- normalizers ----------------

    public static Func<string, string>? Normalizer(JsonElement n, string path)
    {
        if (n.ValueKind is JsonValueKind.Null or JsonValueKind.Undefined) return null;
        var type = Str(n, "type", path, "normalizer");
        switch (type)
        {
            case "Sequence":
                var parts = Arr(n, "normalizers", path, "normalizer").Select(x => Normalizer(x, path)).Where(f => f is not null).ToArray();
                return s => { foreach (var f in parts) s = f!(s); return s; };
            case "Prepend":
                var prefix = Str(n, "prepend", path, "Prepend normalizer");
                return s => s.Length == 0 ? s : prefix + s;
            case "Replace":
                var (regex, literal) = Pattern(n, path, "Replace normalizer");
                var content = Str(n, "content", path, "Replace normalizer");
                return regex is not null ? s => regex.Replace(s, content.Replace("$", "$$")) : s => s.Replace(literal!, content, StringComparison.Ordinal);
            case "NFC": return s => s.Normalize(NormalizationForm.FormC);
            case "NFD": return s => s.Normalize(NormalizationForm.FormD);
            case "NFKC": return s => s.Normalize(NormalizationForm.FormKC);
            case "NFKD": return s => s.Normalize(NormalizationForm.FormKD);
            case "Lowercase": return s => s.ToLowerInvariant();
            case "Strip":
                var left = Bool(n, "strip_left", true); var right = Bool(n, "strip_right", true);
                return s => left && right ? s.Trim() : left ? s.TrimStart() : right ? s.TrimEnd() : s;
            default: throw Unsupported(path, "normalizer", type);
        }
    }

    // ---------------- pre-tokenizers ----------------

    public static Func<List<Piece>, List<Piece>>? PreTokenizer(JsonElement p, string path)
    {
        if (p.ValueKind is JsonValueKind.Null or JsonValueKind.Undefined) return null;
        var type = Str(p, "type", path, "pre_tokenizer");
        switch (type)
        {
            case "Sequence":
                var parts = Arr(p, "pretokenizers", path, "pre_tokenizer").Select(x => PreTokenizer(x, path)).Where(f => f is not null).ToArray();
                return pieces => { foreach (var f in parts) pieces = f!(pieces); return pieces; };
            case "Split":
            {
                var (regex, literal) = Pattern(p, path, "Split pre_tokenizer");
                var matcher = new CodePointRegex(regex is not null ? regex.ToString() : Regex.Escape(literal!));
                var behavior = Str(p, "behavior", path, "Split pre_tokenizer");
                var invert = Bool(p, "invert", false);
                CheckBehavior(behavior, path);
                return pieces => SplitAll(pieces, t => matcher.Matches(t), behavior, invert);
            }
            case "ByteLevel":
            {
                var addPrefixSpace = Bool(p, "add_prefix_space", true);
                var matcher = Bool(p, "use_regex", true) ? new CodePointRegex(ByteLevel.Gpt2Pattern) : null;
                return pieces =>
                {
                    var outp = new List<Piece>();
                    foreach (var piece in pieces)
                    {
                        var t = addPrefixSpace && !piece.Text.StartsWith(' ') ? " " + piece.Text : piece.Text;
                        var split = matcher is null ? [piece with { Text = t }] : SplitAll([piece with { Text = t }], x => matcher.Matches(x), "Isolated", false);
                        foreach (var s in split) outp.Add(s with { Text = ByteLevel.Encode(s.Text) });
                    }
                    return outp;
                };
            }
            case "Metaspace":
            {
                var replacement = Str(p, "replacement", path, "Metaspace pre_tokenizer");
                var scheme = p.TryGetProperty("prepend_scheme", out var ps) && ps.ValueKind == JsonValueKind.String
                    ? ps.GetString()! : Bool(p, "add_prefix_space", true) ? "always" : "never";
                var split = Bool(p, "split", true);
                var matcher = new CodePointRegex(Regex.Escape(replacement));
                return pieces =>
                {
                    var outp = new List<Piece>();
                    foreach (var piece in pieces)
                    {
                        var t = piece.Text.Replace(" ", replacement, StringComparison.Ordinal);
                        var prepend = scheme == "always" || (scheme == "first" && piece.AtTextStart);
                        if (prepend && !t.StartsWith(replacement, StringComparison.Ordinal)) t = replacement + t;
                        var q = piece with { Text = t };
                        if (split) outp.AddRange(SplitAll([q], x => matcher.Matches(x), "MergedWithNext", false));
                        else outp.Add(q);
                    }
                    return outp;
                };
            }
            case "Digits":
            {
                var matcher = new CodePointRegex(Bool(p, "individual_digits", false) ? @"\p{N}" : @"\p{N}+");
                return pieces => SplitAll(pieces, t => matcher.Matches(t), "Isolated", false);
            }
            default: throw Unsupported(path, "pre_tokenizer", type);
        }
    }

    static void CheckBehavior(string behavior, string path)
    {
        if (behavior is not ("Isolated" or "Removed" or "MergedWithPrevious" or "MergedWithNext" or "Contiguous"))
            throw Unsupported(path, "Split behavior", behavior);
    }

    /// <summary>Splits every piece at the matches, joining matches and gaps as <paramref name="behavior"/> says (HF SplitDelimiterBehavior).</summary>
    internal static List<Piece> SplitAll(List<Piece> pieces, Func<string, List<(int Start, int Length)>> matches, string behavior, bool invert)
    {
        var result = new List<Piece>();
        foreach (var piece in pieces)
        {
            var text = piece.Text;
            var spans = new List<(int Start, int End, bool IsMatch)>();
            var pos = 0;
            foreach (var (s, l) in matches(text))
            {
                if (s > pos) spans.Add((pos, s, invert));
                spans.Add((s, s + l, !invert));
                pos = s + l;
            }
            if (pos < text.Length) spans.Add((pos, text.Length, invert));
            var merged = new List<(int Start, int End)>();
            for (var i = 0; i < spans.Count; i++)
            {
                var (s, e, m) = spans[i];
                switch (behavior)
                {
                    case "Removed": if (!m) merged.Add((s, e)); break;
                    case "Isolated": merged.Add((s, e)); break;
                    case "MergedWithPrevious":
                        if (m && merged.Count > 0 && merged[^1].End == s) merged[^1] = (merged[^1].Start, e); else merged.Add((s, e));
                        break;
                    case "MergedWithNext":
                        if (i > 0 && spans[i - 1].IsMatch && merged.Count > 0 && merged[^1].End == s) merged[^1] = (merged[^1].Start, e); else merged.Add((s, e));
                        break;
                    case "Contiguous":
                        if (m && i > 0 && spans[i - 1].IsMatch && merged.Count > 0) merged[^1] = (merged[^1].Start, e); else merged.Add((s, e));
                        break;
                }
            }
            foreach (var (s, e) in merged)
                if (e > s) result.Add(new Piece(text[s..e], piece.AtTextStart && s == 0));
        }
        return result;
    }

    // ---------------- post-processors ----------------

    /// <summary>The ids a post-processor puts before and after a single sequence.</summary>
    public static (List<int> Prefix, List<int> Suffix) PostProcessor(JsonElement p, string path)
    {
        if (p.ValueKind is JsonValueKind.Null or JsonValueKind.Undefined) return ([], []);
        var type = Str(p, "type", path, "post_processor");
        switch (type)
        {
            case "ByteLevel": return ([], []);
            case "Sequence":
            {
                var prefix = new List<int>(); var suffix = new List<int>();
                foreach (var x in Arr(p, "processors", path, "post_processor"))
                {
                    var (a, b) = PostProcessor(x, path);
                    prefix.InsertRange(0, a); suffix.AddRange(b);
                }
                return (prefix, suffix);
            }
            case "TemplateProcessing":
            {
                var prefix = new List<int>(); var suffix = new List<int>();
                var sawSequence = false;
                foreach (var item in Arr(p, "single", path, "TemplateProcessing"))
                {
                    if (item.TryGetProperty("Sequence", out _)) { sawSequence = true; continue; }
                    if (!item.TryGetProperty("SpecialToken", out var st)) throw new TokenizerFormatException($"{path}: TemplateProcessing item is neither Sequence nor SpecialToken");
                    var name = Str(st, "id", path, "TemplateProcessing SpecialToken");
                    if (!p.TryGetProperty("special_tokens", out var specials) || !specials.TryGetProperty(name, out var spec))
                        throw new TokenizerFormatException($"{path}: TemplateProcessing uses special token '{name}' missing from 'special_tokens'");
                    var ids = Arr(spec, "ids", path, "TemplateProcessing special_tokens").Select(x => x.GetInt32());
                    (sawSequence ? suffix : prefix).AddRange(ids);
                }
                return (prefix, suffix);
            }
            case "RobertaProcessing" or "BertProcessing":
            {
                var cls = p.GetProperty("cls")[1].GetInt32();
                var sep = p.GetProperty("sep")[1].GetInt32();
                return ([cls], [sep]);
            }
            default: throw Unsupported(path, "post_processor", type);
        }
    }

    // ---------------- decoders ----------------

    /// <summary>Maps one token string to its bytes; <c>strip</c> is the number of leading spaces removed from the first token.</summary>
    public static (Func<string, byte[]> TokenBytes, int Strip) Decoder(JsonElement d, string path)
    {
        if (d.ValueKind is JsonValueKind.Null or JsonValueKind.Undefined) return (s => Encoding.UTF8.GetBytes(s), 0);
        var type = Str(d, "type", path, "decoder");
        switch (type)
        {
            case "ByteLevel": return (ByteLevel.Decode, 0);
            case "Metaspace":
            {
                var replacement = Str(d, "replacement", path, "Metaspace decoder");
                var scheme = d.TryGetProperty("prepend_scheme", out var ps) && ps.ValueKind == JsonValueKind.String
                    ? ps.GetString()! : Bool(d, "add_prefix_space", true) ? "always" : "never";
                return (s => Encoding.UTF8.GetBytes(s.Replace(replacement, " ", StringComparison.Ordinal)), scheme == "never" ? 0 : 1);
            }
            case "Sequence":
            {
                var steps = new List<Func<string, string>>();
                var byteFallback = false; var strip = 0;
                foreach (var x in Arr(d, "decoders", path, "decoder"))
                {
                    var t = Str(x, "type", path, "decoder");
                    switch (t)
                    {
                        case "Replace":
                            var (regex, literal) = Pattern(x, path, "Replace decoder");
                            var content = Str(x, "content", path, "Replace decoder");
                            steps.Add(regex is not null ? s => regex.Replace(s, content.Replace("$", "$$")) : s => s.Replace(literal!, content, StringComparison.Ordinal));
                            break;
                        case "ByteFallback": byteFallback = true; break;
                        case "Fuse": break;
                        case "Strip":
                            if (Str(x, "content", path, "Strip decoder") != " " || x.GetProperty("stop").GetInt32() != 0)
                                throw Unsupported(path, "Strip decoder (only content ' ' with stop 0)", "Strip");
                            strip = x.GetProperty("start").GetInt32();
                            break;
                        case "ByteLevel":
                            if (steps.Count > 0 || byteFallback) throw Unsupported(path, "decoder sequence with ByteLevel after other steps", t);
                            return (ByteLevel.Decode, 0);
                        default: throw Unsupported(path, "decoder", t);
                    }
                }
                return (s =>
                {
                    if (byteFallback && TryByteToken(s, out var b)) return [b];
                    foreach (var f in steps) s = f(s);
                    return Encoding.UTF8.GetBytes(s);
                }, strip);
            }
            case "ByteFallback": return (s => TryByteToken(s, out var b) ? [b] : Encoding.UTF8.GetBytes(s), 0);
            default: throw Unsupported(path, "decoder", type);
        }
    }

    /// <summary>"&lt;0xNN&gt;" byte-fallback token → its byte.</summary>
    internal static bool TryByteToken(string s, out byte b)
    {
        b = 0;
        return s.Length == 6 && s.StartsWith("<0x", StringComparison.Ordinal) && s[5] == '>'
            && byte.TryParse(s.AsSpan(3, 2), System.Globalization.NumberStyles.HexNumber, null, out b);
    }

    // ---------------- JSON helpers ----------------

    static (Regex? Regex, string? Literal) Pattern(JsonElement e, string path, string what)
    {
        if (!e.TryGetProperty("pattern", out var p) || p.ValueKind != JsonValueKind.Object)
            throw new TokenizerFormatException($"{path}: {what} has no 'pattern' object");
        if (p.TryGetProperty("Regex", out var r)) return (new Regex(r.GetString()!, RegexOptions.CultureInvariant), null);
        if (p.TryGetProperty("String", out var s)) return (null, s.GetString()!);
        throw new TokenizerFormatException($"{path}: {what} pattern must be String or Regex");
    }

    internal static string Str(JsonElement e, string key, string path, string what) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.String
            ? v.GetString()! : throw new TokenizerFormatException($"{path}: {what} has no string '{key}'");

    internal static IEnumerable<JsonElement> Arr(JsonElement e, string key, string path, string what) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.Array
            ? v.EnumerateArray().ToArray() : throw new TokenizerFormatException($"{path}: {what} has no array '{key}'");

    internal static bool Bool(JsonElement e, string key, bool fallback) =>
        e.TryGetProperty(key, out var v) ? v.ValueKind switch { JsonValueKind.True => true, JsonValueKind.False => false, _ => fallback } : fallback;

    static TokenizerFormatException Unsupported(string path, string what, string type) =>
        new($"{path}: unsupported {what} type '{type}'");
}
