using System.Text.Json;
using SmoaServe.Text.Tools;

namespace SmoaServe.Text.Tests.Tools;

/// <summary>Llama 3.1 JSON tool calls parsed from generated text, whole and streamed.</summary>
public class ToolCallParserTests
{
    static Func<string> Ids()
    {
        var n = 0;
        return () => $"call_{n++}";
    }

    [Theory]
    [InlineData("""{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}""")]
    [InlineData("""<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}""")]
    [InlineData("""  {"name":"get_weather","arguments":{"city":"Paris","days":2}} """)]
    [InlineData("""{"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"days\": 2}"}""")]
    public void OneCall(string text)
    {
        var parsed = ToolCallParser.Parse(text, newId: Ids());
        Assert.Null(parsed.Content);
        var call = Assert.Single(parsed.Calls);
        Assert.Equal("call_0", call.Id);
        Assert.Equal("function", call.Type);
        Assert.Equal("get_weather", call.Name);
        Assert.Equal("""{"city":"Paris","days":2}""", call.Arguments);
    }

    [Fact]
    public void SeveralCallsSeparatedBySemicolons()
    {
        var parsed = ToolCallParser.Parse("""{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"x": [1, {"y": "}"}]}}""", newId: Ids());
        Assert.Null(parsed.Content);
        Assert.Equal(["a", "b"], parsed.Calls.Select(c => c.Name));
        Assert.Equal("""{"x":[1,{"y":"}"}]}""", parsed.Calls[1].Arguments);
        Assert.Equal(["call_0", "call_1"], parsed.Calls.Select(c => c.Id));
    }

    [Theory]
    [InlineData("The weather is nice.")]
    [InlineData("""{"answer": 42}""")]                                        // JSON, but not a call
    [InlineData("""{"name": "get_weather", "parameters": [1]}""")]
    [InlineData("""{"name": "get_weather", "parameters": {"city": "Pa""")]   // cut off
    [InlineData("""Sure: {"name": "get_weather", "parameters": {}}""")]     // calls only at the start
    [InlineData("""{"name": "rm_rf", "parameters": {}}""")]                  // not an offered function
    public void NotACallIsContent(string text)
    {
        var parsed = ToolCallParser.Parse(text, knownFunctions: new HashSet<string> { "get_weather" });
        Assert.Empty(parsed.Calls);
        Assert.Equal(text, parsed.Content);
    }

    [Fact]
    public void TextAfterACallIsContent()
    {
        var parsed = ToolCallParser.Parse("""{"name": "a", "parameters": {}} and then some words""");
        Assert.Equal("a", Assert.Single(parsed.Calls).Name);
        Assert.Equal("and then some words", parsed.Content);
    }

    [Theory]
    [InlineData("""<|python_tag|>{"name": "a", "parameters": {"q": "x\"}y"}}; {"name": "b", "arguments": {}}""")]
    [InlineData("Hello there, {\"not\": \"a call\"}")]
    [InlineData("""{"name": "a", "parameters": {"q": 1}} trailing""")]
    [InlineData("""{"name": "a", "parameters": {"q": 1}""")]
    public void StreamingCharByCharMatchesTheWholeParse(string text)
    {
        var whole = ToolCallParser.Parse(text, newId: Ids());
        var stream = new ToolCallStreamParser(newId: Ids());
        var deltas = new List<ToolStreamDelta>();
        foreach (var ch in text) deltas.AddRange(stream.Push(ch.ToString()));
        deltas.AddRange(stream.Finish());
        var content = string.Concat(deltas.Where(d => d.Content is not null).Select(d => d.Content));
        Assert.Equal(whole.Content ?? "", content);
        Assert.Equal(whole.Calls, deltas.Where(d => d.Call is not null).Select(d => d.Call!));
        Assert.Equal(Enumerable.Range(0, whole.Calls.Count), deltas.Where(d => d.Call is not null).Select(d => d.Index));
    }

    [Fact]
    public void StreamingEmitsContentAtOnceAndEachCallWhenItsObjectCloses()
    {
        var plain = new ToolCallStreamParser();
        Assert.Empty(plain.Push("  "));
        Assert.Equal("  Hi", Assert.Single(plain.Push("Hi")).Content);
        Assert.Equal(" there", Assert.Single(plain.Push(" there")).Content);

        var calls = new ToolCallStreamParser(newId: Ids());
        Assert.Empty(calls.Push("<|python"));
        Assert.Empty(calls.Push("_tag|>{\"name\": \"f\", "));
        Assert.Empty(calls.Push("\"parameters\": {\"a\": 1}"));
        var delta = Assert.Single(calls.Push("}"));
        Assert.Equal(0, delta.Index);
        Assert.Equal(new ToolCall("call_0", "f", """{"a":1}"""), delta.Call);
        Assert.Empty(calls.Finish());
    }

    [Fact]
    public void ToolsAndToolChoiceAreChecked()
    {
        using var doc = JsonDocument.Parse("""
            [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object"}}},
             {"type": "function", "function": {"name": "noop"}}]
            """);
        var tools = ToolDefinitions.Parse(doc.RootElement);
        Assert.Equal(["get_weather", "noop"], tools.Select(t => t.Name));
        Assert.Equal("Weather", tools[0].Description);
        Assert.Null(tools[1].Parameters);

        ToolChoice Choice(string json) { using var d = JsonDocument.Parse(json); return ToolDefinitions.ParseChoice(d.RootElement.Clone(), tools); }
        Assert.Equal(ToolChoice.Auto, ToolDefinitions.ParseChoice(null, tools));
        Assert.Equal(ToolChoice.None, ToolDefinitions.ParseChoice(null, []));
        Assert.Equal(ToolChoice.Required, Choice("\"required\""));
        Assert.Equal(new ToolChoice(ToolChoiceMode.Named, "noop"), Choice("""{"type": "function", "function": {"name": "noop"}}"""));
        Assert.Equal("tool_choice", Assert.Throws<ToolRequestException>(() => Choice("""{"type": "function", "function": {"name": "other"}}""")).Param);
        Assert.Equal("tool_choice", Assert.Throws<ToolRequestException>(() => Choice("\"always\"")).Param);

        ToolRequestException Bad(string json) { using var d = JsonDocument.Parse(json); return Assert.Throws<ToolRequestException>(() => ToolDefinitions.Parse(d.RootElement)); }
        Assert.Equal("tools[0].type", Bad("""[{"type": "retrieval"}]""").Param);
        Assert.Equal("tools[1].function.name", Bad("""[{"type": "function", "function": {"name": "a"}}, {"type": "function", "function": {"name": "a"}}]""").Param);
        Assert.Equal("tools[0].function.name", Bad("""[{"type": "function", "function": {"name": "has space"}}]""").Param);
        Assert.Equal("tools[0].function.parameters", Bad("""[{"type": "function", "function": {"name": "a", "parameters": 3}}]""").Param);
    }
}
