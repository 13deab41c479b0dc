namespace SmoaServe.Cli;

// PLACEHOLDER: replaced by the helper that owns the 'merge' command.
public sealed class MergeCommand : ICommand
{
    public string Name => "merge";
    public string Summary => "(not built yet)";
    public string Usage => "smoa merge";
    public int Run(string[] args) => throw new UsageException("not built yet");
}
