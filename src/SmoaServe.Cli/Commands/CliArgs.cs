namespace SmoaServe.Cli.Commands;

/// <summary>A wrong command line: printed as a message with the command's usage, exit code 2.</summary>
public sealed class UsageException(string message) : Exception(message);

/// <summary>
/// Minimal GNU-style option parser: "--name value", "--name=value", boolean "--flag", repeatable options.
/// Every command declares its options up front so an unknown option is an error, not silently ignored.
/// </summary>
public sealed class CliArgs
{
    private readonly Dictionary<string, List<string>> _values = new();
    private readonly HashSet<string> _flags = new();

    public bool Help { get; private set; }
    public IReadOnlyList<string> Positionals { get; private set; } = [];

    /// <param name="valueOptions">options that take a value, without the leading dashes</param>
    /// <param name="flagOptions">boolean options</param>
    public static CliArgs Parse(IEnumerable<string> args, IEnumerable<string> valueOptions, IEnumerable<string>? flagOptions = null)
    {
        var valueSet = valueOptions.ToHashSet();
        var flagSet = (flagOptions ?? []).ToHashSet();
        var result = new CliArgs();
        var positionals = new List<string>();
        var list = args.ToList();
        for (int i = 0; i < list.Count; i++)
        {
            string a = list[i];
            if (a is "--help" or "-h") { result.Help = true; continue; }
            if (!a.StartsWith("--", StringComparison.Ordinal)) { positionals.Add(a); continue; }
            string name = a[2..];
            string? inline = null;
            int eq = name.IndexOf('=');
            if (eq >= 0) { inline = name[(eq + 1)..]; name = name[..eq]; }
            if (flagSet.Contains(name))
            {
                if (inline is not null && !bool.TryParse(inline, out _)) throw new UsageException($"--{name} takes no value");
                if (inline is null || bool.Parse(inline)) result._flags.Add(name);
                continue;
            }
            if (!valueSet.Contains(name)) throw new UsageException($"unknown option --{name}");
            string value = inline ?? (i + 1 < list.Count ? list[++i] : throw new UsageException($"--{name} needs a value"));
            if (!result._values.TryGetValue(name, out var vs)) result._values[name] = vs = new List<string>();
            vs.Add(value);
        }
        result.Positionals = positionals;
        return result;
    }

    public bool Has(string name) => _values.ContainsKey(name) || _flags.Contains(name);
    public bool Flag(string name) => _flags.Contains(name);
    public IReadOnlyList<string> All(string name) => _values.TryGetValue(name, out var v) ? v : [];

    public string? Get(string name) => _values.TryGetValue(name, out var v) ? v[^1] : null;

    public string Required(string name) => Get(name) ?? throw new UsageException($"--{name} is required");

    public int GetInt(string name, int fallback) => Get(name) is { } s ? ParseInt(name, s) : fallback;
    public int RequiredInt(string name) => ParseInt(name, Required(name));
    public double GetDouble(string name, double fallback) => Get(name) is { } s ? ParseDouble(name, s) : fallback;
    public long? GetLong(string name) => Get(name) is { } s ? (long.TryParse(s, out var v) ? v : throw new UsageException($"--{name}: '{s}' is not an integer")) : null;

    private static int ParseInt(string name, string s) =>
        int.TryParse(s, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out var v)
            ? v : throw new UsageException($"--{name}: '{s}' is not an integer");

    private static double ParseDouble(string name, string s) =>
        double.TryParse(s, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var v)
            ? v : throw new UsageException($"--{name}: '{s}' is not a number");
}
