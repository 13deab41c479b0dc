namespace SmoaServe.Cli;

// PLACEHOLDER: replaced by the helper that owns the 'generate' command.
public sealed class GenerateCommand : ICommand
{
    public string Name => "generate";
    public string Summary => "(not built yet)";
    public string Usage => "smoa generate";
    public int Run(string[] args) => throw new UsageException("not built yet");
}
