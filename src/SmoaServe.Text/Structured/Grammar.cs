using System.Runtime.CompilerServices;
using System.Text;

namespace SmoaServe.Text.Structured;

/// <summary>A schema feature outside the supported subset; the message names the keyword and where it is.</summary>
public sealed class UnsupportedSchemaException(string keyword, string path, string message) : Exception(message)
{
    /// <summary>The JSON Schema keyword (or feature) that is not supported.</summary>
    public string Keyword { get; } = keyword;
    /// <summary>JSON pointer of the schema location ("#/properties/x").</summary>
    public string SchemaPath { get; } = path;
}

/// <summary>Bounds that keep constrained output finite and the automaton small.</summary>
public sealed record JsonGrammarOptions
{
    /// <summary>Longest run of optional whitespace at any one place (between tokens of the JSON text).</summary>
    public int MaxWhitespace { get; init; } = 16;
    /// <summary>Length bound (characters) for strings whose schema sets no maxLength, object keys included; null = unbounded.</summary>
    public int? DefaultMaxStringLength { get; init; }
    public int MaxIntegerDigits { get; init; } = 15;
    public int MaxFractionDigits { get; init; } = 15;
    public int MaxExponentDigits { get; init; } = 2;
    /// <summary>Objects/arrays nested deeper than this are refused (schema) or not generated (free-form JSON).</summary>
    public int MaxNestingDepth { get; init; } = 20;
    public int MaxStates { get; init; } = 200_000;
    public int MaxTableCells { get; init; } = 16_000_000;

    public static JsonGrammarOptions Default { get; } = new();

    internal void Validate()
    {
        if (MaxWhitespace is < 0 or > 64) throw new ArgumentException($"MaxWhitespace must be in [0, 64] (got {MaxWhitespace})");
        if (DefaultMaxStringLength is < 1) throw new ArgumentException("DefaultMaxStringLength must be positive");
        if (MaxIntegerDigits < 1 || MaxFractionDigits < 1 || MaxExponentDigits < 1) throw new ArgumentException("digit bounds must be positive");
        if (MaxNestingDepth is < 1 or > 1000) throw new ArgumentException($"MaxNestingDepth must be in [1, 1000] (got {MaxNestingDepth})");
    }
}

/// <summary>
/// A compiled output grammar: a byte-level pushdown automaton, independent of any tokenizer. Build one per schema
/// (<see cref="JsonSchemaGrammar"/>), share it between requests; <see cref="GrammarMatcher"/> follows one output.
/// Token masks are cached per grammar and vocabulary, so reusing a grammar makes later requests cheaper.
/// </summary>
public sealed class Grammar
{
    readonly ConditionalWeakTable<TokenVocabulary, MaskCache> _caches = new();

    internal Grammar(ByteAutomaton automaton, string description)
    {
        Automaton = automaton;
        Description = description;
    }

    internal ByteAutomaton Automaton { get; }

    /// <summary>What the grammar was compiled from (for logs).</summary>
    public string Description { get; }

    public int StateCount => Automaton.StateCount;

    internal MaskCache CacheFor(TokenVocabulary vocabulary) => _caches.GetValue(vocabulary, v => new MaskCache(this, v));

    /// <summary>Whether <paramref name="text"/> (UTF-8) is a complete sentence of the grammar.</summary>
    public bool Accepts(string text) => Accepts(Encoding.UTF8.GetBytes(text));

    public bool Accepts(ReadOnlySpan<byte> utf8)
    {
        var a = Automaton;
        int state = a.Start, count = 0;
        Frame? stack = null;
        foreach (var b in utf8)
            if (a.Step(ref state, ref count, ref stack, 0, b, localStack: false) != StepResult.Ok) return false;
        return a.IsComplete(state, stack);
    }

    public override string ToString() => Description;
}
