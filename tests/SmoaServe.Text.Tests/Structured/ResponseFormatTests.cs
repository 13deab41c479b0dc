using System.Text.Json;
using SmoaServe.Text.Structured;

namespace SmoaServe.Text.Tests.Structured;

public class ResponseFormatTests
{
    static Grammar? Compile(string json, GrammarCache? cache = null)
    {
        using var doc = JsonDocument.Parse(json);
        return ResponseFormats.Compile(doc.RootElement, cache);
    }

    [Fact]
    public void OpenAiShapes()
    {
        Assert.Null(Compile("""{"type": "text"}"""));
        Assert.True(Compile("""{"type": "json_object"}""")!.Accepts("""{"a": [1]}"""));
        var g = Compile("""{"type": "json_schema", "json_schema": {"name": "r", "strict": true, "schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": false}}}""")!;
        Assert.True(g.Accepts("""{"ok": true}"""));
        Assert.False(g.Accepts("""{"ok": 1}"""));
        Assert.Throws<ResponseFormatException>(() => Compile("""{"type": "yaml"}"""));
        Assert.Throws<ResponseFormatException>(() => Compile("""{"type": "json_schema"}"""));
        Assert.Throws<ResponseFormatException>(() => Compile("""{"type": "json_schema", "json_schema": {"name": "r"}}"""));
        Assert.Equal("pattern", Assert.Throws<UnsupportedSchemaException>(() =>
            Compile("""{"type": "json_schema", "json_schema": {"schema": {"type": "string", "pattern": "a+"}}}""")).Keyword);
    }

    [Fact]
    public void CacheReturnsTheSameGrammarAndDropsTheLeastRecentlyUsed()
    {
        var cache = new GrammarCache(capacity: 2);
        const string a = """{"type": "json_schema", "json_schema": {"schema": {"type": "integer"}}}""";
        const string b = """{"type": "json_schema", "json_schema": {"schema": {"type": "string"}}}""";
        var ga = Compile(a, cache);
        Assert.Same(ga, Compile(a, cache));
        var gb = Compile(b, cache);
        Compile("""{"type": "json_object"}""", cache);           // evicts a (b was used later)
        Assert.Equal(2, cache.Count);
        Assert.Same(gb, Compile(b, cache));
        Assert.NotSame(ga, Compile(a, cache));
    }
}
