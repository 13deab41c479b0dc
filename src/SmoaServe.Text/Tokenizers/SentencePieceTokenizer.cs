using System.Text;

namespace SmoaServe.Text.Tokenizers;

/// <summary>
/// A SentencePiece BPE tokenizer.model (Llama 2 style), encoding as HF's LlamaTokenizer (legacy) does: the text is
/// split at control/unknown piece strings, each chunk gets the "▁" dummy prefix and spaces become "▁", pieces are
/// merged by score (highest first, leftmost on ties), unknown characters fall back to &lt;0xNN&gt; byte pieces.
/// </summary>
internal sealed class SentencePieceTokenizer : TokenizerBase
{
    const char Space = '\u2581';
    enum PieceType { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 }
    readonly record struct SpPiece(string Text, float Score, PieceType Type);

    readonly SpPiece[] _pieces;
    readonly Dictionary<string, int> _mergeable = new(StringComparer.Ordinal);   // NORMAL and USER_DEFINED pieces
    readonly int[] _byteIds = Enumerable.Repeat(-1, 256).ToArray();
    readonly AddedTokenSplitter _specials;
    readonly string[] _userDefined;                                              // longest first
    readonly bool _byteFallback, _addDummyPrefix, _removeExtraWhitespaces, _escapeWhitespaces;
    readonly int? _unkId;
    readonly bool _addBos, _addEos;

    SentencePieceTokenizer(byte[] proto, string path, TokenizerConfig config)
    {
        var model = ModelProto.Parse(proto, path);
        if (model.ModelType != 2)
            throw new TokenizerFormatException($"{path}: SentencePiece model_type {model.ModelType} is not supported (only BPE = 2)");
        if (model.Pieces.Count == 0) throw new TokenizerFormatException($"{path}: no pieces");
        _pieces = model.Pieces.Select(p => new SpPiece(p.Text, p.Score, (PieceType)p.Type)).ToArray();
        _byteFallback = model.ByteFallback;
        _addDummyPrefix = model.AddDummyPrefix;
        _removeExtraWhitespaces = model.RemoveExtraWhitespaces;
        _escapeWhitespaces = model.EscapeWhitespaces;
        if (model.NormalizerName is not (null or "" or "identity"))
            throw new TokenizerFormatException($"{path}: SentencePiece normalizer '{model.NormalizerName}' is not supported (only identity)");

        EnsureCapacity(_pieces.Length);
        var specials = new List<AddedToken>();
        for (var id = 0; id < _pieces.Length; id++)
        {
            var p = _pieces[id];
            IdByToken.TryAdd(p.Text, id);
            switch (p.Type)
            {
                case PieceType.Normal or PieceType.UserDefined or PieceType.Unused:
                    if (p.Type != PieceType.Unused) _mergeable.TryAdd(p.Text, id);
                    BytesById[id] = Encoding.UTF8.GetBytes(p.Text.Replace(Space, ' '));
                    break;
                case PieceType.Byte:
                    if (!HfPipeline.TryByteToken(p.Text, out var b)) throw new TokenizerFormatException($"{path}: byte piece #{id} '{p.Text}' is not <0xNN>");
                    _byteIds[b] = id;
                    BytesById[id] = [b];
                    break;
                case PieceType.Control or PieceType.Unknown:
                    if (p.Type == PieceType.Unknown) _unkId ??= id;
                    BytesById[id] = Encoding.UTF8.GetBytes(p.Text);
                    SpecialById[id] = true;
                    if (p.Text.Length > 0) specials.Add(new AddedToken(id, p.Text, true, false, false, false));
                    break;
                default: throw new TokenizerFormatException($"{path}: piece #{id} has unknown type {(int)p.Type}");
            }
        }
        foreach (var a in config.AddedTokens)
        {
            // tokenizer_config.json added_tokens_decoder: matched in text before SentencePiece, as the slow tokenizer does
            if (a.Id < _pieces.Length && _pieces[a.Id].Text != a.Content)
                throw new TokenizerFormatException($"tokenizer_config.json: added token {a.Id} '{a.Content}' differs from piece '{_pieces[a.Id].Text}' of {path}");
            EnsureCapacity(a.Id + 1);
            BytesById[a.Id] = Encoding.UTF8.GetBytes(a.Content);
            SpecialById[a.Id] = a.Special;
            IdByToken[a.Content] = a.Id;
            specials.RemoveAll(s => s.Content == a.Content);
            specials.Add(a);
        }
        _specials = new AddedTokenSplitter(specials);
        _userDefined = _pieces.Where(p => p.Type == PieceType.UserDefined && p.Text.Length > 0)
            .Select(p => p.Text).OrderByDescending(s => s.Length).ToArray();
        LeadingSpacesToStrip = _addDummyPrefix ? 1 : 0;
        StripAfterSpecial = true;

        BosTokenId = config.BosToken is { } bos ? TokenToId(bos) ?? throw Missing("bos_token", bos, path) : model.BosId is int bi && bi >= 0 && bi < _pieces.Length ? bi : TokenToId("<s>");
        EosTokenId = config.EosToken is { } eos ? TokenToId(eos) ?? throw Missing("eos_token", eos, path) : model.EosId is int ei && ei >= 0 && ei < _pieces.Length ? ei : TokenToId("</s>");
        _addBos = config.AddBosToken ?? true;
        _addEos = config.AddEosToken ?? false;
    }

    static TokenizerFormatException Missing(string key, string token, string path) =>
        new($"tokenizer_config.json: {key} '{token}' is not a piece of {path}");

    public static SentencePieceTokenizer Load(string path, TokenizerConfig config) => new(File.ReadAllBytes(path), path, config);

    public override IReadOnlyList<int> Encode(string text, bool addSpecialTokens)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>();
        if (addSpecialTokens && _addBos && BosTokenId is int bos) ids.Add(bos);
        foreach (var seg in _specials.Split(text))
        {
            if (seg.TokenId is int id) ids.Add(id);
            else EncodeChunk(seg.Text, ids);
        }
        if (addSpecialTokens && _addEos && EosTokenId is int eos) ids.Add(eos);
        return ids;
    }

    void EncodeChunk(string text, List<int> ids)
    {
        var normalized = Normalize(text);
        if (normalized.Length == 0) return;
        var symbols = InitialSymbols(normalized);
        foreach (var s in MergeByScore(symbols)) EmitPiece(s, ids);
    }

    string Normalize(string text)
    {
        if (_removeExtraWhitespaces)
            text = string.Join(' ', text.Split(' ', StringSplitOptions.RemoveEmptyEntries));
        if (text.Length == 0) return text;
        if (_addDummyPrefix) text = " " + text;
        return _escapeWhitespaces ? text.Replace(' ', Space) : text;
    }

    /// <summary>User-defined pieces whole (longest match), otherwise one symbol per code point.</summary>
    List<string> InitialSymbols(string s)
    {
        var symbols = new List<string>(s.Length);
        for (var i = 0; i < s.Length;)
        {
            var ud = _userDefined.FirstOrDefault(u => string.CompareOrdinal(s, i, u, 0, u.Length) == 0 && i + u.Length <= s.Length);
            var len = ud?.Length ?? (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]) ? 2 : 1);
            symbols.Add(s.Substring(i, len));
            i += len;
        }
        return symbols;
    }

    /// <summary>SentencePiece bpe_model.cc: repeatedly merge the adjacent pair whose concatenation is the highest-scoring piece.</summary>
    List<string> MergeByScore(List<string> symbols)
    {
        var n = symbols.Count;
        var text = symbols.ToArray();
        var prev = new int[n];
        var next = new int[n];
        for (var i = 0; i < n; i++) { prev[i] = i - 1; next[i] = i + 1 < n ? i + 1 : -1; }
        var queue = new PriorityQueue<(int Left, string Merged), (float NegScore, int Left)>();
        void Consider(int left)
        {
            if (left < 0 || next[left] < 0) return;
            var merged = text[left] + text[next[left]];
            if (_mergeable.TryGetValue(merged, out var id)) queue.Enqueue((left, merged), (-_pieces[id].Score, left));
        }
        for (var i = 0; i + 1 < n; i++) Consider(i);
        while (queue.TryDequeue(out var top, out _))
        {
            var left = top.Left;
            if (text[left] is null || next[left] < 0) continue;
            var right = next[left];
            if (text[left].Length + text[right].Length != top.Merged.Length
                || !top.Merged.StartsWith(text[left], StringComparison.Ordinal)
                || !top.Merged.AsSpan(text[left].Length).SequenceEqual(text[right])) continue;   // stale entry
            text[left] = top.Merged;
            text[right] = null!;
            next[left] = next[right];
            if (next[left] >= 0) prev[next[left]] = left;
            Consider(prev[left]);
            Consider(left);
        }
        var result = new List<string>();
        for (var i = 0; i >= 0; i = next[i]) result.Add(text[i]);
        return result;
    }

    void EmitPiece(string piece, List<int> ids)
    {
        if (_mergeable.TryGetValue(piece, out var id)) { ids.Add(id); return; }
        if (_byteFallback)
        {
            var bytes = Encoding.UTF8.GetBytes(piece);
            if (bytes.All(b => _byteIds[b] >= 0)) { foreach (var b in bytes) ids.Add(_byteIds[b]); return; }
        }
        if (_unkId is int unk) ids.Add(unk);
    }
}

/// <summary>The fields of sentencepiece_model.proto's ModelProto this tokenizer uses, read straight from the wire format.</summary>
internal sealed class ModelProto
{
    public readonly record struct Piece(string Text, float Score, int Type);
    public List<Piece> Pieces { get; } = new();
    public int ModelType { get; private set; } = 1;         // TrainerSpec.model_type (field 3), default UNIGRAM
    public bool ByteFallback { get; private set; }          // TrainerSpec.byte_fallback (field 35)
    public int? BosId { get; private set; }                 // TrainerSpec.bos_id (41), default 1
    public int? EosId { get; private set; }                 // TrainerSpec.eos_id (42), default 2
    public string? NormalizerName { get; private set; }     // NormalizerSpec.name (1)
    public bool AddDummyPrefix { get; private set; } = true;            // NormalizerSpec field 3
    public bool RemoveExtraWhitespaces { get; private set; } = true;    // NormalizerSpec field 4
    public bool EscapeWhitespaces { get; private set; } = true;         // NormalizerSpec field 5

    public static ModelProto Parse(byte[] data, string path)
    {
        var m = new ModelProto();
        try
        {
            var r = new ProtoReader(data, 0, data.Length);
            while (r.Next(out var field, out var wire))
            {
                if (field == 1 && wire == 2) m.Pieces.Add(ParsePiece(r.Sub()));
                else if (field == 2 && wire == 2) m.ParseTrainer(r.Sub());
                else if (field == 3 && wire == 2) m.ParseNormalizer(r.Sub());
                else r.Skip(wire);
            }
        }
        catch (Exception e) when (e is not TokenizerFormatException)
        {
            throw new TokenizerFormatException($"{path}: not a valid SentencePiece model ({e.Message})", e);
        }
        return m;
    }

    static Piece ParsePiece(ProtoReader r)
    {
        string text = ""; float score = 0; var type = 1;
        while (r.Next(out var field, out var wire))
        {
            if (field == 1 && wire == 2) text = r.String();
            else if (field == 2 && wire == 5) score = r.Float();
            else if (field == 3 && wire == 0) type = (int)r.Varint();
            else r.Skip(wire);
        }
        return new Piece(text, score, type);
    }

    void ParseTrainer(ProtoReader r)
    {
        while (r.Next(out var field, out var wire))
        {
            if (wire != 0) { r.Skip(wire); continue; }
            var v = r.Varint();
            switch (field)
            {
                case 3: ModelType = (int)v; break;
                case 35: ByteFallback = v != 0; break;
                case 41: BosId = (int)v; break;
                case 42: EosId = (int)v; break;
            }
        }
    }

    void ParseNormalizer(ProtoReader r)
    {
        while (r.Next(out var field, out var wire))
        {
            if (field == 1 && wire == 2) { NormalizerName = r.String(); continue; }
            if (wire != 0) { r.Skip(wire); continue; }
            var v = r.Varint() != 0;
            switch (field)
            {
                case 3: AddDummyPrefix = v; break;
                case 4: RemoveExtraWhitespaces = v; break;
                case 5: EscapeWhitespaces = v; break;
            }
        }
    }
}

/// <summary>A bounds-checked protobuf wire-format reader over a slice of a byte array.</summary>
internal sealed class ProtoReader(byte[] data, int start, int end)
{
    int _pos = start;

    public bool Next(out int field, out int wire)
    {
        field = wire = 0;
        if (_pos >= end) return false;
        var key = Varint();
        field = (int)(key >> 3);
        wire = (int)(key & 7);
        return true;
    }

    public ulong Varint()
    {
        ulong v = 0;
        for (var shift = 0; shift < 64; shift += 7)
        {
            if (_pos >= end) throw new FormatException("truncated varint");
            var b = data[_pos++];
            v |= (ulong)(b & 0x7F) << shift;
            if (b < 0x80) return v;
        }
        throw new FormatException("varint too long");
    }

    public ProtoReader Sub()
    {
        var len = Varint();
        if (len > (ulong)(end - _pos)) throw new FormatException("length-delimited field runs past the end");
        var sub = new ProtoReader(data, _pos, _pos + (int)len);
        _pos += (int)len;
        return sub;
    }

    public string String()
    {
        var len = Varint();
        if (len > (ulong)(end - _pos)) throw new FormatException("string runs past the end");
        var s = Encoding.UTF8.GetString(data, _pos, (int)len);
        _pos += (int)len;
        return s;
    }

    public float Float()
    {
        if (end - _pos < 4) throw new FormatException("truncated float");
        var f = BitConverter.ToSingle(data, _pos);
        _pos += 4;
        return f;
    }

    public void Skip(int wire)
    {
        switch (wire)
        {
            case 0: Varint(); break;
            case 1: Advance(8); break;
            case 2: Sub(); break;
            case 5: Advance(4); break;
            default: throw new FormatException($"unsupported wire type {wire}");
        }
    }

    void Advance(int n)
    {
        if (end - _pos < n) throw new FormatException("truncated field");
        _pos += n;
    }
}
