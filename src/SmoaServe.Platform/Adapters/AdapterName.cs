using System.Text.RegularExpressions;

namespace SmoaServe.Platform.Adapters;

/// <summary>
/// The one rule for adapter names, used wherever a name enters: the adapters directory, the command line, the API.
/// 1-64 characters of letters, digits, '.', '_' and '-'; not "." or ".." (a name is also a directory name), and not the
/// base model's id (requests name the model they want).
/// </summary>
public static partial class AdapterName
{
    public const int MaxLength = 64;

    public static bool IsValid(string? name) => name is not null && NamePattern().IsMatch(name) && name is not ("." or "..");

    /// <summary>Throws <see cref="ArgumentException"/> with a message for the user when <paramref name="name"/> breaks the rule.</summary>
    public static void Validate(string? name, string? baseModelId = null)
    {
        if (!IsValid(name))
            throw new ArgumentException($"adapter name '{Shorten(name)}' must be 1-{MaxLength} characters of letters, digits, '.', '_' or '-' (and not '.' or '..')");
        if (name == baseModelId) throw new ArgumentException($"adapter name '{name}' is the base model's id");
    }

    private static string Shorten(string? name) => name is null ? "" : name.Length <= 80 ? name : name[..80] + "…";

    [GeneratedRegex(@"^[A-Za-z0-9._-]{1,64}$", RegexOptions.CultureInvariant)]
    private static partial Regex NamePattern();
}
