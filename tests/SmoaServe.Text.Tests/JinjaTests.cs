namespace SmoaServe.Text.Tests;

/// <summary>The Jinja interpreter against Jinja2's documented semantics (HF environment: trim_blocks, lstrip_blocks).</summary>
public class JinjaTests
{
    static string R(string template, object? vars = null, bool addGenerationPrompt = false)
    {
        var t = new ChatTemplate(template, new Dictionary<string, string?> { ["bos_token"] = "<s>", ["eos_token"] = "</s>" });
        var v = vars is null ? new Dictionary<string, object?>()
            : vars.GetType().GetProperties().ToDictionary(p => p.Name, p => p.GetValue(vars));
        return t.Render(Array.Empty<IReadOnlyDictionary<string, object?>>(), addGenerationPrompt, v);
    }

    [Fact]
    public void TrimBlocksAndLstripBlocksAsInTheJinjaDocs() =>
        Assert.Equal("<div>\n    yay\n</div>", R("<div>\n    {% if true %}\n    yay\n    {% endif %}\n</div>"));

    [Fact]
    public void VariableTagsKeepTheirNewlineAndPlusDisablesLstrip()
    {
        Assert.Equal("a\nb", R("{{ 'a' }}\nb"));
        Assert.Equal("  x", R("  {%+ if true %}x{% endif %}"));
        Assert.Equal("\nx\n", R("{% if true +%}\nx{% endif +%}\n\n"));   // "+%}" keeps the newline; one trailing newline of the source is dropped
    }

    [Fact]
    public void MinusStripsAllWhitespace() => Assert.Equal("a|b|c", R("a  \n {{- '|' -}} \n\t b {#- comment -#}\n|{%- if true -%}  c  {%- endif %}"));

    [Fact]
    public void CommentsDisappearAndTrimTheirNewline() => Assert.Equal("ab", R("a{# note #}\nb"));

    [Fact]
    public void ForLoopVariablesAndElse()
    {
        Assert.Equal("0/1/3:T:F,1/2/3:F:F,2/3/3:F:T,",
            R("{% for x in xs %}{{ loop.index0 }}/{{ loop.index }}/{{ loop.length }}:{{ 'T' if loop.first else 'F' }}:{{ 'T' if loop.last else 'F' }},{% endfor %}", new { xs = new[] { "a", "b", "c" } }));
        Assert.Equal("empty", R("{% for x in [] %}{{ x }}{% else %}empty{% endfor %}"));
        Assert.Equal("2,4,", R("{% for x in [1, 2, 3, 4] if x is even %}{{ x }},{% endfor %}"));
        Assert.Equal("a=1;b=2;", R("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", new { d = new Dictionary<string, object> { ["a"] = 1, ["b"] = 2 } }));
        Assert.Equal("1,2,", R("{% for x in [1, 2, 3, 4] %}{% if x > 2 %}{% break %}{% endif %}{{ x }},{% endfor %}"));
        Assert.Equal("1,3,", R("{% for x in [1, 2, 3] %}{% if x == 2 %}{% continue %}{% endif %}{{ x }},{% endfor %}"));
    }

    [Fact]
    public void SetInsideLoopDoesNotLeakButNamespaceDoes()
    {
        Assert.Equal("0", R("{% set n = 0 %}{% for x in [1, 2] %}{% set n = n + x %}{% endfor %}{{ n }}"));
        Assert.Equal("3", R("{% set ns = namespace(n=0) %}{% for x in [1, 2] %}{% set ns.n = ns.n + x %}{% endfor %}{{ ns.n }}"));
        Assert.Equal("1 2", R("{% set a, b = 1, 2 %}{{ a }} {{ b }}"));
        Assert.Equal("HI", R("{% set x %}  hi  {% endset %}{{ x | trim | upper }}"));
    }

    [Fact]
    public void IfElifElse() =>
        Assert.Equal("b", R("{% if x == 1 %}a{% elif x == 2 %}b{% else %}c{% endif %}", new { x = 2 }));

    [Fact]
    public void ExpressionsFollowPython()
    {
        Assert.Equal("7|2|2.5|2|-3|1|8|ab|a1|True|False", R("{{ 1 + 2 * 3 }}|{{ 7 // 3 }}|{{ 5 / 2 }}|{{ 5 % 3 }}|{{ -7 // 3 }}|{{ -7 % 4 }}|{{ 2 ** 3 }}|{{ 'a' + 'b' }}|{{ 'a' ~ 1 }}|{{ 1 == 1.0 }}|{{ 'a' in 'xyz' }}"));
        Assert.Equal("[1, 2, 3]|[3, 2, 1]|[2, 3]|[1, 2]|cba|bc|3", R("{{ [1, 2] + [3] }}|{{ [1, 2, 3][::-1] }}|{{ [1, 2, 3][1:] }}|{{ [1, 2, 3][:-1] }}|{{ 'abc'[::-1] }}|{{ 'abc'[1:] }}|{{ [1, 2, 3][-1] }}"));
        Assert.Equal("{'a': 1, 'b': [True, None, 'x']}", R("{{ {'a': 1, 'b': [true, none, \"x\"]} }}"));
        Assert.Equal("1.0|0.1|1e-05|1e+16|2.5", R("{{ 1.0 }}|{{ 0.1 }}|{{ 0.00001 }}|{{ 1e16 }}|{{ 2.5 }}"));
        Assert.Equal("yes|no|x", R("{{ 'yes' if 1 < 2 < 3 else 'no' }}|{{ 'yes' if 3 not in [1, 2, 3] else 'no' }}|{{ none or 'x' }}"));
        Assert.Equal("line1\nline2\t'\"", R("{{ 'line1\\nline2\\t\\'\"' }}"));
    }

    [Fact]
    public void UndefinedIsEmptyFalsyAndTestable()
    {
        Assert.Equal("[]", R("[{{ nothing }}]"));
        Assert.Equal("no", R("{% if nothing %}yes{% else %}no{% endif %}"));
        Assert.Equal("True False True True", R("{{ nothing is undefined }} {{ nothing is defined }} {{ tools is none }} {{ d.missing is undefined }}", new { d = new Dictionary<string, object>() }));
        Assert.Equal("0", R("{{ nothing | length }}"));
        Assert.Equal("fallback|0", R("{{ nothing | default('fallback') }}|{{ '' | default(0, true) }}"));
        var e = Assert.Throws<ChatTemplateException>(() => R("{{ nothing.attr }}"));
        Assert.Contains("'nothing' is undefined", e.Message);
    }

    [Fact]
    public void TestsWorkLikeJinja()
    {
        Assert.Equal("True True True False True True True True",
            R("{{ 'x' is string }} {{ {} is mapping }} {{ 'x' is iterable }} {{ 1 is string }} {{ 3 is odd }} {{ 6 is divisibleby 3 }} {{ x is not none }} {{ 'a' is equalto('a') }}", new { x = 1 }));
    }

    [Fact]
    public void FiltersWorkLikeJinja()
    {
        Assert.Equal("a, b|A|3|a|c|x-y|Hello world|HELLO|5|[1, 2]",
            R("{{ ['a', 'b'] | join(', ') }}|{{ 'a' | upper }}|{{ [1, 2, 3] | length }}|{{ 'abc' | first }}|{{ 'abc' | last }}|{{ 'x y' | replace(' ', '-') }}|{{ 'hello WORLD' | capitalize }}|{{ 'hello' | upper }}|{{ '5' | int }}|{{ [2, 1] | sort }}"));
        Assert.Equal("a,c|b|2|3|a: 1;", R("{{ ['a', 'b', 'c'] | reject('equalto', 'b') | join(',') }}|{{ [{'n': 'a', 'k': 0}, {'n': 'b', 'k': 1}] | selectattr('k') | map(attribute='n') | join }}|{{ [1, 2, 2] | unique | list | length }}|{{ [1, 2] | sum }}|{% for k, v in {'a': 1} | items %}{{ k }}: {{ v }};{% endfor %}"));
        Assert.Equal("  a\n  b", R("{{ 'a\\nb' | indent(2, true) }}"));
    }

    [Fact]
    public void TojsonMatchesPythonJsonDumps()
    {
        var d = new Dictionary<string, object?> { ["name"] = "f", ["args"] = new Dictionary<string, object?> { ["x"] = 1, ["y"] = new object?[] { true, null, 1.5, "é\"\n" } } };
        Assert.Equal("{\"name\": \"f\", \"args\": {\"x\": 1, \"y\": [true, null, 1.5, \"é\\\"\\n\"]}}", R("{{ d | tojson }}", new { d }));
        Assert.Equal("{\n  \"name\": \"f\",\n  \"args\": {\n    \"x\": 1,\n    \"y\": [\n      true,\n      null,\n      1.5,\n      \"é\\\"\\n\"\n    ]\n  }\n}", R("{{ d | tojson(indent=2) }}", new { d }));
        Assert.Equal("{\"a\":[]}", R("{{ {'a': []} | tojson(separators=(',', ':')) }}"));
    }

    [Fact]
    public void StringMethods()
    {
        Assert.Equal("x|x  |  x|True|True|['a', 'b', 'c']|['a', 'b,c']|X|y|{'k': 1}|['k']|1|dflt",
            R("{{ '  x  '.strip() }}|{{ '  x  '.lstrip() }}|{{ '  x  '.rstrip() }}|{{ 'abc'.startswith('ab') }}|{{ 'abc'.endswith(('x', 'c')) }}|{{ 'a b  c'.split() }}|{{ 'a,b,c'.split(',', 1) }}|{{ 'x'.upper() }}|{{ 'Y'.lower() }}|{{ dict(k=1) }}|{{ dict(k=1).keys() | list }}|{{ {'k': 1}.get('k') }}|{{ {'k': 1}.get('z', 'dflt') }}"));
    }

    [Fact]
    public void MacrosWithDefaults() =>
        Assert.Equal("<a:1><b:2>", R("{% macro tag(name, v=2) %}<{{ name }}:{{ v }}>{% endmacro %}{{ tag('a', 1) }}{{ tag('b') }}"));

    [Fact]
    public void GenerationTagRendersItsBody() => Assert.Equal("xy", R("{% generation %}x{% endgeneration %}y"));

    [Fact]
    public void RaiseExceptionStopsRenderingWithItsMessage()
    {
        var e = Assert.Throws<ChatTemplateException>(() => R("a{{ raise_exception('bad role: ' + role) }}", new { role = "tool" }));
        Assert.Equal("bad role: tool", e.Message);
    }

    [Fact]
    public void RaiseExceptionInsideAMacroKeepsItsMessage()
    {
        var e = Assert.Throws<ChatTemplateException>(() => R("{% macro check(x) %}{{ raise_exception('no ' + x) }}{% endmacro %}\n{% for m in ['a'] %}{{ check(m) }}{% endfor %}"));
        Assert.Equal("no a", e.Message);
    }

    [Fact]
    public void TypeErrorsAtRenderNameTheLine()
    {
        var e = Assert.Throws<ChatTemplateException>(() => R("ok\n{{ 'a' + 1 }}"));
        Assert.Contains("line 2", e.Message);
        Assert.Contains("unsupported operand type(s) for +: 'str' and 'int'", e.Message);
    }

    [Fact]
    public void StrftimeDirectives() =>
        Assert.Equal("07 Mar 2025|March 7, 2025|Friday 14:05:09|2025-03-07",
            Jinja.JinjaBuiltins.Strftime(new DateTime(2025, 3, 7, 14, 5, 9), "%d %b %Y|%B %-d, %Y|%A %H:%M:%S|%Y-%m-%d"));

    [Fact]
    public void SpecialTokensAndGenerationPromptAreVariables() =>
        Assert.Equal("<s>|</s>|True|None", R("{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}|{{ tools }}", addGenerationPrompt: true));
}
