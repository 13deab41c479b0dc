namespace SmoaServe.Cli;

// PLACEHOLDER: replaced by the helper that owns the 'score' command.
public sealed class ScoreCommand : ICommand
{
    public string Name => "score";
    public string Summary => "(not built yet)";
    public string Usage => "smoa score";
    public int Run(string[] args) => throw new UsageException("not built yet");
}
