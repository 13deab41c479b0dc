namespace SmoaServe.Cli;

// PLACEHOLDER: replaced by the helper that owns the 'serve' command.
public sealed class ServeCommand : ICommand
{
    public string Name => "serve";
    public string Summary => "(not built yet)";
    public string Usage => "smoa serve";
    public int Run(string[] args) => throw new UsageException("not built yet");
}
