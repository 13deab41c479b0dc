using System.Text.Json;
using SmoaServe.Text.Structured;

namespace SmoaServe.Text.Tests.Structured;

/// <summary>What compiled schemas accept, what they refuse, and the features rejected with a named keyword.</summary>
public class JsonSchemaGrammarTests
{
    static Grammar Compile(string schema, JsonGrammarOptions? options = null) => JsonSchemaGrammar.Compile(schema, options);

    [Theory]
    [InlineData("""{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"string"}},"required":["a"]}""",
        new[] { """{"a":1}""", """{"a": -20, "b": "x"}""", " {\n  \"a\": 0\n} " },
        new[] { """{}""", """{"b":"x"}""", """{"b":"x","a":1}""", """{"a":1.5}""", """{"a":01}""", """{"a":1,}""", """{"a":1,"c":2}""", """{"a":1}x""" })]
    [InlineData("""{"type":"array","items":{"type":"boolean"},"minItems":1,"maxItems":2}""",
        new[] { "[true]", "[false, true]", "[ true ]" },
        new[] { "[]", "[true,true,true]", "[true,]", "[1]" })]
    [InlineData("""{"type":"string","minLength":2,"maxLength":3}""",
        new[] { "\"ab\"", "\"abc\"", "\"é😀\"", "\"\\n\\u00e9x\"" },
        new[] { "\"a\"", "\"abcd\"", "\"a\nb\"", "\"\\ud800x\"", "\"\\q1\"", "\"ab" })]
    [InlineData("""{"enum":["red", 1, null, {"k":[true]}]}""",
        new[] { "\"red\"", "1", "null", "{\"k\":[true]}" },
        new[] { "\"re\"", "10", "{\"k\":[false]}", "true" })]
    [InlineData("""{"anyOf":[{"type":"string","maxLength":1},{"type":"null"},{"type":"array","items":{"type":"integer"}}]}""",
        new[] { "\"x\"", "null", "[1, 2]", "[]" },
        new[] { "\"xy\"", "nul", "[\"a\"]", "1" })]
    [InlineData("""{"type":["number","null"]}""",
        new[] { "1", "-0.5", "2e10", "1.25E-3", "null" },
        new[] { "+1", ".5", "1.", "1e", "--1", "NaN" })]
    [InlineData("""{"$defs":{"P":{"type":"object","properties":{"x":{"const":"y"}},"required":["x"],"additionalProperties":false}},"type":"array","items":{"$ref":"#/$defs/P"}}""",
        new[] { "[{\"x\":\"y\"}]", "[]" },
        new[] { "[{\"x\":\"z\"}]", "[{}]" })]
    public void AcceptsExactlyTheSchemaLanguage(string schema, string[] accepted, string[] rejected)
    {
        var g = Compile(schema);
        foreach (var text in accepted) Assert.True(g.Accepts(text), $"should accept {text}");
        foreach (var text in rejected) Assert.False(g.Accepts(text), $"should reject {text}");
    }

    [Fact]
    public void OptionalPropertiesInSchemaOrderAnySubset()
    {
        var g = Compile("""{"type":"object","properties":{"a":{"type":"null"},"b":{"type":"null"},"c":{"type":"null"}},"required":["b"]}""");
        Assert.True(g.Accepts("""{"b":null}"""));
        Assert.True(g.Accepts("""{"a":null,"b":null}"""));
        Assert.True(g.Accepts("""{"b":null,"c":null}"""));
        Assert.True(g.Accepts("""{"a":null,"b":null,"c":null}"""));
        Assert.False(g.Accepts("""{"a":null}"""));
        Assert.False(g.Accepts("""{"a":null,"c":null}"""));
        Assert.False(g.Accepts("""{"b":null,"a":null}"""));
        Assert.False(g.Accepts("""{"b":null,"b":null}"""));
    }

    [Fact]
    public void PropertyNamesThatArePrefixesAndNeedEscapes()
    {
        var g = Compile("""{"type":"object","properties":{"n":{"type":"integer"},"na":{"type":"integer"},"q\"t":{"type":"integer"}}}""");
        Assert.True(g.Accepts("""{"n":1,"na":2,"q\"t":3}"""));
        Assert.True(g.Accepts("""{"na":2}"""));
        Assert.False(g.Accepts("""{"nb":2}"""));
    }

    [Fact]
    public void WhitespaceAndDigitsAreBounded()
    {
        var g = Compile("""{"type":"array","items":{"type":"integer"}}""", new JsonGrammarOptions { MaxWhitespace = 2, MaxIntegerDigits = 3 });
        Assert.True(g.Accepts("[  1,  22 ,333]"));
        Assert.False(g.Accepts("[   1]"));
        Assert.False(g.Accepts("[1234]"));
        var free = Compile("""{"type":"string"}""", new JsonGrammarOptions { DefaultMaxStringLength = 4 });
        Assert.True(free.Accepts("\"abcd\""));
        Assert.False(free.Accepts("\"abcde\""));
    }

    [Fact]
    public void JsonObjectModeAcceptsAnyObjectUpToTheDepthLimit()
    {
        var g = JsonSchemaGrammar.AnyObject(new JsonGrammarOptions { MaxNestingDepth = 3 });
        Assert.True(g.Accepts("""{"a": [1, {"b": null}], "c": "d", "e": {}}"""));
        Assert.True(g.Accepts("{}"));
        Assert.False(g.Accepts("[1]"));
        Assert.False(g.Accepts("\"x\""));
        Assert.True(g.Accepts("""{"a": [[1]]}"""));         // 3 levels
        Assert.False(g.Accepts("""{"a": [[[1]]]}"""));      // 4 levels
        Assert.False(g.Accepts("""{"a": [[[]]]}"""));       // an empty array still opens a level
    }

    [Theory]
    [InlineData("""{"type":"string","pattern":"^a"}""", "pattern")]
    [InlineData("""{"type":"string","format":"date-time"}""", "format")]
    [InlineData("""{"type":"integer","minimum":0}""", "minimum")]
    [InlineData("""{"type":"number","multipleOf":2}""", "multipleOf")]
    [InlineData("""{"type":"array","uniqueItems":true}""", "uniqueItems")]
    [InlineData("""{"type":"array","prefixItems":[{"type":"null"}]}""", "prefixItems")]
    [InlineData("""{"type":"array","items":[{"type":"null"}]}""", "items")]
    [InlineData("""{"type":"object","patternProperties":{"a":{}}}""", "patternProperties")]
    [InlineData("""{"not":{"type":"null"}}""", "not")]
    [InlineData("""{"allOf":[{"type":"null"},{"type":"null"}]}""", "allOf")]
    [InlineData("""{"anyOf":[{"type":"integer"},{"type":"number"}]}""", "anyOf")]
    [InlineData("""{"oneOf":[{"type":"object"},{"type":"object","properties":{"a":{}}}]}""", "oneOf")]
    [InlineData("""{"type":"object","properties":{"next":{"$ref":"#"}}}""", "$ref")]
    [InlineData("""{"$ref":"https://example.com/s.json"}""", "$ref")]
    [InlineData("""{"type":"object","required":["a"]}""", "required")]
    [InlineData("""{"type":"string","minLength":3,"maxLength":2}""", "minLength")]
    [InlineData("""{"type":"frobnicate"}""", "type")]
    [InlineData("""{"enum":[1,2],"type":"string"}""", "enum")]
    [InlineData("""false""", "false")]
    public void UnsupportedFeaturesAreNamed(string schema, string keyword)
    {
        var e = Assert.Throws<UnsupportedSchemaException>(() => Compile(schema));
        Assert.Equal(keyword, e.Keyword);
        Assert.Contains($"'{keyword}'", e.Message);
    }

    [Fact]
    public void UnsupportedKeywordDeepInsideIsLocated()
    {
        var e = Assert.Throws<UnsupportedSchemaException>(() =>
            Compile("""{"type":"object","properties":{"user":{"type":"object","properties":{"email":{"type":"string","format":"email"}}}}}"""));
        Assert.Equal("#/properties/user/properties/email", e.SchemaPath);
    }

    [Fact]
    public void AnnotationsAreIgnored()
    {
        var g = Compile("""{"title":"T","description":"d","$schema":"https://json-schema.org/draft/2020-12/schema","type":"boolean","default":true,"examples":[true],"x-extra":1}""");
        Assert.True(g.Accepts("false"));
    }

    [Fact]
    public void NestingBeyondTheLimitIsRefused()
    {
        var schema = """{"type":"array","items":""" + string.Concat(Enumerable.Repeat("""{"type":"array","items":""", 4)) + """{"type":"null"}""" + new string('}', 5);
        Assert.Throws<UnsupportedSchemaException>(() => Compile(schema, new JsonGrammarOptions { MaxNestingDepth = 4 }));
        Assert.True(Compile(schema, new JsonGrammarOptions { MaxNestingDepth = 5 }).Accepts("[[[[[null]]]]]"));
    }
}
