namespace SmoaServe.Cli;

// PLACEHOLDER: replaced by the helper that owns the 'bench' command.
public sealed class BenchCommand : ICommand
{
    public string Name => "bench";
    public string Summary => "(not built yet)";
    public string Usage => "smoa bench";
    public int Run(string[] args) => throw new UsageException("not built yet");
}
