namespace SmoaServe.Cli.Commands;

/// <summary>One `smoa` sub-command. Run returns the process exit code.</summary>
public interface ICommand
{
    string Name { get; }
    /// <summary>One line for `smoa --help`.</summary>
    string Summary { get; }
    /// <summary>Full usage text for `smoa NAME --help` and for usage errors.</summary>
    string Usage { get; }
    int Run(string[] args);
}
