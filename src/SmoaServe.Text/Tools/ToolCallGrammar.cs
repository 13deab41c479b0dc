using System.Text.Json;
using SmoaServe.Text.Structured;

namespace SmoaServe.Text.Tools;

/// <summary>
/// The output grammar of a forced tool call (tool_choice "required" or a named function), in the Llama 3.1 JSON
/// tool-call format: {"name": "&lt;function&gt;", "parameters": &lt;arguments&gt;}, where the arguments follow the chosen
/// function's parameters schema (the name decides which schema applies).
/// </summary>
public static class ToolCallGrammar
{
    /// <exception cref="UnsupportedSchemaException">a function's parameters schema is outside the supported subset (message names the tool)</exception>
    public static Grammar Build(IReadOnlyList<ToolFunction> tools, ToolChoice choice, JsonGrammarOptions? options = null)
    {
        if (!choice.ForcesCall) throw new ArgumentException("only a required or named tool choice constrains the output", nameof(choice));
        var functions = choice.Mode == ToolChoiceMode.Named ? tools.Where(t => t.Name == choice.FunctionName).ToList() : tools.ToList();
        if (functions.Count == 0) throw new ArgumentException("no function to call", nameof(tools));
        options ??= JsonGrammarOptions.Default;
        options.Validate();
        var b = new AutomatonBuilder(options.MaxStates);
        var rules = new JsonRules(b, options);

        var arguments = new int[functions.Count];
        for (var i = 0; i < functions.Count; i++)
        {
            using var empty = JsonDocument.Parse("""{"type":"object","properties":{},"additionalProperties":false}""");
            var schema = functions[i].Parameters ?? empty.RootElement;
            try { arguments[i] = new SchemaCompiler(schema, options, rules).CompileRoot(level: 1); }
            catch (UnsupportedSchemaException e)
            {
                throw new UnsupportedSchemaException(e.Keyword, e.SchemaPath, $"tool '{functions[i].Name}': {e.Message}");
            }
        }

        // { "name" : "<f_i>" , "parameters" : <arguments_i> }
        int ws = options.MaxWhitespace;
        int start = b.NewState(), end = b.NewState(final: true);
        int[] open = b.WhitespaceChain(ws), colon = b.WhitespaceChain(ws), value = b.WhitespaceChain(ws), close = b.WhitespaceChain(ws);
        b.Add(start, '{', Transition.Goto(open[0]) with { Nesting = true });
        Key(open, "name\""u8, colon);
        b.AddAll(colon, ':', Transition.Goto(value[0]));
        var nameRoot = b.NewState();
        b.AddAll(value, '"', Transition.Goto(nameRoot));
        var children = new Dictionary<(int, byte), int>();
        for (var i = 0; i < functions.Count; i++)
        {
            int[] afterName = b.WhitespaceChain(ws), comma = b.WhitespaceChain(ws),
                  paramColon = b.WhitespaceChain(ws), paramValue = b.WhitespaceChain(ws);
            // the name's bytes as a trie shared by all functions; its closing quote decides the function
            var s = nameRoot;
            foreach (var x in JsonSchemaGrammar.EscapedUtf8(functions[i].Name))
            {
                if (!children.TryGetValue((s, x), out var next))
                {
                    next = b.NewState();
                    children[(s, x)] = next;
                    b.Add(s, x, x, Transition.Goto(next));
                }
                s = next;
            }
            b.Add(s, '"', Transition.Goto(afterName[0]));
            b.AddAll(afterName, ',', Transition.Goto(comma[0]));
            Key(comma, "parameters\""u8, paramColon);
            b.AddAll(paramColon, ':', Transition.Goto(paramValue[0]));
            b.CallAll(paramValue, arguments[i], close[0]);
        }
        b.AddAll(close, '}', Transition.Goto(end));
        var root = rules.Root(start);
        return new Grammar(b.Build(root, options.MaxNestingDepth, depthBinds: rules.UsesAnyValue, options.MaxTableCells),
            $"tool call ({string.Join(", ", functions.Select(f => f.Name))})");

        // from each state of `from`: the quoted key, then the states of `to` (the key's closing quote leads there)
        void Key(int[] from, ReadOnlySpan<byte> keyAndQuote, int[] to)
        {
            var q = b.NewState();
            b.AddAll(from, '"', Transition.Goto(q));
            var last = b.Spell(q, keyAndQuote[..^1]);
            b.Add(last, '"', Transition.Goto(to[0]));
        }
    }
}
