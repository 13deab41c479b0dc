using System.Text;
using System.Text.Json;

namespace SmoaServe.Text.Tokenizers;

/// <summary>
/// A Hugging Face tokenizer.json with a BPE model: added tokens split out first, then per text segment the
/// normalizer, the pre-tokenizer and BPE; the post-processor (or tokenizer_config's add_bos/eos_token) adds BOS/EOS.
/// </summary>
internal sealed class HfJsonTokenizer : TokenizerBase
{
    readonly AddedTokenSplitter _added;
    readonly Func<string, string>? _normalize;
    readonly Func<List<Piece>, List<Piece>>? _preTokenize;
    readonly BpeModel _model;
    readonly int[] _prefix, _suffix;

    HfJsonTokenizer(JsonElement root, string path, TokenizerConfig config)
    {
        var model = root.TryGetProperty("model", out var m) && m.ValueKind == JsonValueKind.Object
            ? m : throw new TokenizerFormatException($"{path}: no 'model' object");
        var modelType = model.TryGetProperty("type", out var t) ? t.GetString() : "BPE";
        if (modelType != "BPE") throw new TokenizerFormatException($"{path}: model type '{modelType}' is not supported (only BPE)");
        foreach (var key in new[] { "continuing_subword_prefix", "end_of_word_suffix" })
            if (model.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.String && v.GetString()!.Length > 0)
                throw new TokenizerFormatException($"{path}: BPE '{key}' is not supported");

        var vocab = ReadVocab(model, path);
        var added = ReadAddedTokens(root, path);
        var size = Math.Max(vocab.Count == 0 ? 0 : vocab.Values.Max() + 1, added.Count == 0 ? 0 : added.Max(a => a.Id) + 1);
        EnsureCapacity(size);

        var (tokenBytes, strip) = HfPipeline.Decoder(Prop(root, "decoder"), path);
        LeadingSpacesToStrip = strip;
        foreach (var (token, id) in vocab) { BytesById[id] = tokenBytes(token); IdByToken[token] = id; }
        foreach (var a in added)
        {
            BytesById[a.Id] = Encoding.UTF8.GetBytes(a.Content);
            SpecialById[a.Id] = a.Special;
            IdByToken[a.Content] = a.Id;
        }

        int? unkId = model.TryGetProperty("unk_token", out var unk) && unk.ValueKind == JsonValueKind.String
            ? (vocab.TryGetValue(unk.GetString()!, out var u) ? u : throw new TokenizerFormatException($"{path}: unk_token '{unk.GetString()}' is not in the vocab"))
            : null;
        _model = new BpeModel(vocab, ReadMerges(model, vocab, path),
            HfPipeline.Bool(model, "ignore_merges", false), HfPipeline.Bool(model, "byte_fallback", false),
            HfPipeline.Bool(model, "fuse_unk", false), unkId);
        _added = new AddedTokenSplitter(added);
        _normalize = HfPipeline.Normalizer(Prop(root, "normalizer"), path);
        _preTokenize = HfPipeline.PreTokenizer(Prop(root, "pre_tokenizer"), path);

        BosTokenId = SpecialId(config.BosToken, "bos_token", path);
        EosTokenId = SpecialId(config.EosToken, "eos_token", path);
        var (prefix, suffix) = HfPipeline.PostProcessor(Prop(root, "post_processor"), path);
        if (config.AddBosToken is not null || config.AddEosToken is not null)
        {
            // tokenizer_config.json's add_bos_token / add_eos_token rebuild the template (HF LlamaTokenizerFast.update_post_processor).
            prefix = config.AddBosToken == true && BosTokenId is int b ? [b] : config.AddBosToken is null ? prefix : [];
            suffix = config.AddEosToken == true && EosTokenId is int e ? [e] : config.AddEosToken is null ? suffix : [];
        }
        if (config.BosToken is null && prefix.Count == 1) BosTokenId = prefix[0];     // no tokenizer_config: the template's BOS
        _prefix = prefix.ToArray();
        _suffix = suffix.ToArray();
    }

    public static HfJsonTokenizer Load(string path, TokenizerConfig config)
    {
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
            return new HfJsonTokenizer(doc.RootElement, path, config);
        }
        catch (JsonException e) { throw new TokenizerFormatException($"{path}: not valid JSON ({e.Message})", e); }
        catch (Exception e) when (e is InvalidOperationException or KeyNotFoundException or FormatException or ArgumentException or IndexOutOfRangeException)
        {
            throw new TokenizerFormatException($"{path}: malformed tokenizer ({e.Message})", e);
        }
    }

    public override IReadOnlyList<int> Encode(string text, bool addSpecialTokens)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>();
        if (addSpecialTokens) ids.AddRange(_prefix);
        foreach (var seg in _added.Split(text))
        {
            if (seg.TokenId is int id) { ids.Add(id); continue; }
            EncodeSegment(seg.Text, seg.Start == 0, ids);
        }
        if (addSpecialTokens) ids.AddRange(_suffix);
        return ids;
    }

    void EncodeSegment(string text, bool atTextStart, List<int> ids)
    {
        if (_normalize is not null) text = _normalize(text);
        if (text.Length == 0) return;
        List<Piece> pieces = [new Piece(text, atTextStart)];
        if (_preTokenize is not null) pieces = _preTokenize(pieces);
        foreach (var p in pieces) _model.EncodeWord(p.Text, ids);
    }

    int? SpecialId(string? token, string key, string path)
    {
        if (token is null) return null;
        return TokenToId(token) ?? throw new TokenizerFormatException($"tokenizer_config.json: {key} '{token}' is not a token of {path}");
    }

    static JsonElement Prop(JsonElement root, string key) => root.TryGetProperty(key, out var v) ? v : default;

    static Dictionary<string, int> ReadVocab(JsonElement model, string path)
    {
        if (!model.TryGetProperty("vocab", out var v) || v.ValueKind != JsonValueKind.Object)
            throw new TokenizerFormatException($"{path}: model has no 'vocab' object");
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var p in v.EnumerateObject())
        {
            var id = p.Value.GetInt32();
            if (id < 0 || id > 10_000_000) throw new TokenizerFormatException($"{path}: vocab id {id} of '{p.Name}' is out of range");
            vocab[p.Name] = id;
        }
        return vocab;
    }

    /// <summary>Merges as "a b" strings or ["a", "b"] pairs; rank = position in the list.</summary>
    static Dictionary<(int, int), (int, int)> ReadMerges(JsonElement model, Dictionary<string, int> vocab, string path)
    {
        var merges = new Dictionary<(int, int), (int, int)>();
        if (!model.TryGetProperty("merges", out var arr) || arr.ValueKind == JsonValueKind.Null) return merges;
        var rank = 0;
        foreach (var m in arr.EnumerateArray())
        {
            string a, b;
            if (m.ValueKind == JsonValueKind.String)
            {
                var s = m.GetString()!;
                var sp = s.IndexOf(' ');
                if (sp <= 0 || sp != s.LastIndexOf(' ')) throw new TokenizerFormatException($"{path}: merge #{rank} '{s}' is not two tokens");
                (a, b) = (s[..sp], s[(sp + 1)..]);
            }
            else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2) (a, b) = (m[0].GetString()!, m[1].GetString()!);
            else throw new TokenizerFormatException($"{path}: merge #{rank} is neither \"a b\" nor [a, b]");
            if (!vocab.TryGetValue(a, out var ia) || !vocab.TryGetValue(b, out var ib) || !vocab.TryGetValue(a + b, out var merged))
                throw new TokenizerFormatException($"{path}: merge #{rank} ('{a}', '{b}') uses a token missing from the vocab");
            merges.TryAdd((ia, ib), (rank, merged));
            rank++;
        }
        return merges;
    }

    static List<AddedToken> ReadAddedTokens(JsonElement root, string path)
    {
        var list = new List<AddedToken>();
        if (!root.TryGetProperty("added_tokens", out var arr) || arr.ValueKind == JsonValueKind.Null) return list;
        foreach (var t in arr.EnumerateArray())
        {
            var content = HfPipeline.Str(t, "content", path, "added token");
            if (content.Length == 0) throw new TokenizerFormatException($"{path}: an added token has empty content");
            list.Add(new AddedToken(t.GetProperty("id").GetInt32(), content, HfPipeline.Bool(t, "special", false),
                HfPipeline.Bool(t, "lstrip", false), HfPipeline.Bool(t, "rstrip", false), HfPipeline.Bool(t, "single_word", false)));
        }
        return list;
    }
}

internal sealed record AddedToken(int Id, string Content, bool Special, bool LStrip, bool RStrip, bool SingleWord);

/// <summary>Splits text at added tokens (leftmost, then longest), before any normalization, as HF's AddedVocabulary does.</summary>
internal sealed class AddedTokenSplitter
{
    readonly Dictionary<char, AddedToken[]> _byFirstChar;

    public AddedTokenSplitter(IEnumerable<AddedToken> tokens) =>
        _byFirstChar = tokens.GroupBy(t => t.Content[0])
            .ToDictionary(g => g.Key, g => g.OrderByDescending(t => t.Content.Length).ToArray());

    public readonly record struct Segment(string Text, int Start, int? TokenId);

    public List<Segment> Split(string text)
    {
        var segments = new List<Segment>();
        int segStart = 0, pos = 0;
        while (pos < text.Length)
        {
            var token = MatchAt(text, pos);
            if (token is null) { pos++; continue; }
            int start = pos, end = pos + token.Content.Length;
            if (token.LStrip) while (start > segStart && char.IsWhiteSpace(text[start - 1])) start--;
            if (token.RStrip) while (end < text.Length && char.IsWhiteSpace(text[end])) end++;
            if (start > segStart) segments.Add(new Segment(text[segStart..start], segStart, null));
            segments.Add(new Segment(token.Content, start, token.Id));
            segStart = pos = end;
        }
        if (segStart < text.Length) segments.Add(new Segment(text[segStart..], segStart, null));
        return segments;
    }

    AddedToken? MatchAt(string text, int pos)
    {
        if (!_byFirstChar.TryGetValue(text[pos], out var candidates)) return null;
        foreach (var t in candidates)
        {
            if (pos + t.Content.Length > text.Length || string.CompareOrdinal(text, pos, t.Content, 0, t.Content.Length) != 0) continue;
            if (t.SingleWord && (IsWordChar(text, pos - 1) || IsWordChar(text, pos + t.Content.Length))) continue;
            return t;
        }
        return null;
    }

    static bool IsWordChar(string s, int i) => i >= 0 && i < s.Length && (char.IsLetterOrDigit(s[i]) || s[i] == '_');
}
