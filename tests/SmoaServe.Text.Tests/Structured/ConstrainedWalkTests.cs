using System.Text.Json;
using System.Text.Json.Nodes;
using SmoaServe.Tests;
using SmoaServe.Text.Structured;

namespace SmoaServe.Text.Tests.Structured;

/// <summary>
/// Random walks through grammars: each step picks uniformly (seeded) among the ids the matcher allows. The mask
/// must never be empty before completion, must equal a brute-force check of every id, and the decoded text must
/// parse as JSON and validate against the schema.
/// </summary>
public class ConstrainedWalkTests
{
    static readonly Lazy<(ITextTokenizer Tok, TokenVocabulary Vocab)> LlamaA = new(() =>
    {
        var tok = TokenizerLoader.Load(FixturePaths.LlamaA);
        return (tok, TokenVocabulary.From(tok, [tok.EosTokenId!.Value, tok.TokenToId("<|end_of_text|>")!.Value]));
    });

    static readonly JsonGrammarOptions WalkOptions = new() { DefaultMaxStringLength = 10, MaxWhitespace = 3, MaxNestingDepth = 6 };

    /// <summary>Walks to a stop token; returns the generated ids (stop excluded).</summary>
    internal static List<int> Walk(Grammar grammar, TokenVocabulary vocab, Random rng, bool bruteForce, int maxSteps = 4000)
    {
        var matcher = new GrammarMatcher(grammar, vocab);
        var mask = new TokenBitmask(vocab.Size);
        var ids = new List<int>();
        for (var step = 0; step < maxSteps; step++)
        {
            matcher.FillNextTokenMask(mask);
            var allowed = mask.AllowedIds().ToList();
            Assert.True(allowed.Count > 0, $"empty mask after {ids.Count} tokens");
            if (bruteForce)
                for (var id = 0; id < vocab.Size; id++)
                    Assert.True(mask.IsAllowed(id) == matcher.CanAccept(id), $"mask disagrees with the automaton for id {id} at step {step}");
            var pick = allowed[rng.Next(allowed.Count)];
            if (vocab.IsStopToken(pick))
            {
                Assert.True(matcher.IsComplete);
                Assert.True(matcher.Accept(pick));
                Assert.True(matcher.IsTerminated);
                return ids;
            }
            Assert.True(matcher.Accept(pick), $"allowed id {pick} was not accepted");
            ids.Add(pick);
        }
        throw new Xunit.Sdk.XunitException($"no stop token after {maxSteps} steps");
    }

    [Fact]
    public void TwoHundredRandomSchemasProduceValidJson()
    {
        var (tok, vocab) = LlamaA.Value;
        var schemas = new RandomSchemas(seed: 20251201);
        var rng = new Random(7);
        for (var i = 0; i < 200; i++)
        {
            var schemaNode = schemas.Next();
            var schemaText = schemaNode.ToJsonString();
            using var schemaDoc = JsonDocument.Parse(schemaText);
            var grammar = JsonSchemaGrammar.Compile(schemaDoc.RootElement, WalkOptions);
            for (var w = 0; w < 2; w++)
            {
                var ids = Walk(grammar, vocab, rng, bruteForce: i < 30);
                var text = tok.Decode(ids);
                JsonDocument doc;
                try { doc = JsonDocument.Parse(text); }
                catch (JsonException e) { throw new Xunit.Sdk.XunitException($"schema #{i} {schemaText}\noutput does not parse: {text}\n{e.Message}"); }
                using (doc)
                {
                    var error = SchemaValidator.Validate(doc.RootElement, schemaDoc.RootElement);
                    Assert.True(error is null, $"schema #{i} {schemaText}\noutput {text}\n{error}");
                }
                Assert.True(grammar.Accepts(text));
            }
        }
    }

    [Fact]
    public void JsonObjectModeProducesObjects()
    {
        var (tok, vocab) = LlamaA.Value;
        var grammar = JsonSchemaGrammar.AnyObject(WalkOptions with { MaxNestingDepth = 3 });
        var rng = new Random(11);
        for (var i = 0; i < 40; i++)
        {
            var text = tok.Decode(Walk(grammar, vocab, rng, bruteForce: i < 5));
            using var doc = JsonDocument.Parse(text);
            Assert.Equal(JsonValueKind.Object, doc.RootElement.ValueKind);
            Assert.True(Depth(doc.RootElement) <= 3, text);
        }
    }

    static int Depth(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Object => 1 + e.EnumerateObject().Select(p => Depth(p.Value)).DefaultIfEmpty(0).Max(),
        JsonValueKind.Array => 1 + e.EnumerateArray().Select(Depth).DefaultIfEmpty(0).Max(),
        _ => 0,
    };

    [Fact]
    public void SentencePieceVocabularyWalks()
    {
        using var dir = new TempModelDir().Write("tokenizer.model", SentencePieceTests.ModelProto(byteFallback: true));
        var tok = TokenizerLoader.Load(dir.Path);
        var vocab = TokenVocabulary.From(tok, [tok.EosTokenId!.Value]);
        Assert.True(vocab.TokenBytes(tok.TokenToId("▁he")!.Value).SequenceEqual(" he"u8));
        Assert.True(vocab.TokenBytes(tok.BosTokenId!.Value).IsEmpty);
        var schemas = new RandomSchemas(seed: 5);
        var rng = new Random(3);
        for (var i = 0; i < 25; i++)
        {
            using var schemaDoc = JsonDocument.Parse(schemas.Next().ToJsonString());
            var grammar = JsonSchemaGrammar.Compile(schemaDoc.RootElement, WalkOptions);
            var ids = Walk(grammar, vocab, rng, bruteForce: i < 10);
            var text = tok.Decode(ids);
            using var doc = JsonDocument.Parse(text);
            Assert.Null(SchemaValidator.Validate(doc.RootElement, schemaDoc.RootElement));
        }
    }

    [Fact]
    public void StopTokensOnlyWhenCompleteAndSpecialTokensNever()
    {
        var (tok, vocab) = LlamaA.Value;
        var grammar = JsonSchemaGrammar.Compile("""{"type":"object","properties":{"ok":{"type":"boolean"}},"required":["ok"]}""");
        var m = new GrammarMatcher(grammar, vocab);
        var eos = tok.EosTokenId!.Value;
        var header = tok.TokenToId("<|start_header_id|>")!.Value;
        foreach (var piece in new[] { "{", "\"ok\"", ":", " true" })
        {
            var mask = m.NextTokenMask();
            Assert.False(mask.IsAllowed(eos));
            Assert.False(mask.IsAllowed(header));
            Assert.False(m.Accept(eos));
            Assert.True(m.AcceptBytes(System.Text.Encoding.UTF8.GetBytes(piece)));
        }
        Assert.False(m.IsComplete);
        Assert.False(m.NextTokenMask().IsAllowed(eos));
        Assert.True(m.AcceptBytes("}"u8));
        Assert.True(m.IsComplete);
        var final = m.NextTokenMask();
        Assert.True(final.IsAllowed(eos));
        Assert.False(final.IsAllowed(header));
        Assert.False(final.IsAllowed(tok.Encode("x", false)[0]));
        Assert.True(m.Accept(eos));
        Assert.True(m.IsTerminated);
        Assert.Equal(0, m.NextTokenMask().CountAllowed());
    }

    [Fact]
    public void MaskAppliesToLogitsIncludingPaddedIds()
    {
        var (_, vocab) = LlamaA.Value;
        var m = new GrammarMatcher(JsonSchemaGrammar.Compile("""{"enum":[true]}"""), vocab);
        var logits = Enumerable.Repeat(1f, vocab.Size + 40).ToArray();
        m.MaskLogits(logits);
        var allowed = m.NextTokenMask();
        for (var i = 0; i < logits.Length; i++)
            Assert.Equal(i < vocab.Size && allowed.IsAllowed(i) ? 1f : float.NegativeInfinity, logits[i]);
        Assert.True(allowed.CountAllowed() > 0);
        // every allowed token starts "true" (or is whitespace)
        foreach (var id in allowed.AllowedIds())
        {
            var s = System.Text.Encoding.UTF8.GetString(vocab.TokenBytes(id)).TrimStart();
            Assert.True(s.Length == 0 || "true".StartsWith(s, StringComparison.Ordinal), s);
        }
    }

    [Fact]
    public void MaskCacheIsSharedAcrossMatchersAndStaysCorrectForCounts()
    {
        var (tok, vocab) = LlamaA.Value;
        // long bounded strings: counts far from the bound share cache entries; near it they must not
        var grammar = JsonSchemaGrammar.Compile("""{"type":"array","items":{"type":"string","minLength":2,"maxLength":40},"minItems":1,"maxItems":5}""",
            new JsonGrammarOptions { MaxWhitespace = 1 });
        var rng = new Random(2);
        for (var i = 0; i < 6; i++)
        {
            var text = tok.Decode(Walk(grammar, vocab, rng, bruteForce: true));
            using var doc = JsonDocument.Parse(text);
            Assert.InRange(doc.RootElement.GetArrayLength(), 1, 5);
            foreach (var s in doc.RootElement.EnumerateArray()) Assert.InRange(s.GetString()!.EnumerateRunes().Count(), 2, 40);
        }
    }

    [Fact]
    public void LargeVocabularyWithSplitCharactersMatchesBruteForce()
    {
        // 32k ids with multi-byte and split UTF-8 pieces: whole-subtree acceptance must agree with stepping every id
        var vocab = StructuredBench.SyntheticVocabulary(32000, seed: 4);
        var schemas = new RandomSchemas(seed: 99);
        var rng = new Random(5);
        for (var i = 0; i < 4; i++)
        {
            using var schemaDoc = JsonDocument.Parse(schemas.Next().ToJsonString());
            var grammar = JsonSchemaGrammar.Compile(schemaDoc.RootElement, WalkOptions);
            var ids = Walk(grammar, vocab, rng, bruteForce: true, maxSteps: 4000);
            var bytes = ids.SelectMany(id => vocab.TokenBytes(id).ToArray()).ToArray();
            using var doc = JsonDocument.Parse(bytes);
            Assert.Null(SchemaValidator.Validate(doc.RootElement, schemaDoc.RootElement));
        }
        // a free string: most of the vocabulary is allowed and the mask must still be exact
        var free = new GrammarMatcher(JsonSchemaGrammar.Compile("""{"type":"string"}"""), vocab);
        Assert.True(free.AcceptBytes("\"ab"u8));
        var mask = free.NextTokenMask();
        for (var id = 0; id < vocab.Size; id++) Assert.Equal(free.CanAccept(id), mask.IsAllowed(id));
        Assert.True(mask.CountAllowed() > vocab.Size * 9 / 10);
        // a bounded string at every count: the mask shrinks to the tokens that still fit
        var bounded = new GrammarMatcher(JsonSchemaGrammar.Compile("""{"type":"string","maxLength":20}"""), vocab);
        Assert.True(bounded.AcceptBytes("\""u8));
        for (var count = 0; count <= 20; count++)
        {
            var m = bounded.NextTokenMask();
            for (var id = 0; id < vocab.Size; id++) Assert.Equal(bounded.CanAccept(id), m.IsAllowed(id));
            Assert.Equal(count < 20, bounded.AcceptBytes("x"u8));
        }
        // inside a multi-byte character only continuation pieces fit
        Assert.True(free.AcceptBytes([0xE4]));
        mask = free.NextTokenMask();
        for (var id = 0; id < vocab.Size; id++) Assert.Equal(free.CanAccept(id), mask.IsAllowed(id));
    }
}
