using SmoaServe.Cli.Commands;

namespace SmoaServe.Cli;

public static class Program
{
    /// <summary>Every `smoa` command, each in its own file under Commands/.</summary>
    public static IReadOnlyList<ICommand> Commands { get; } =
    [
        new ScoreCommand(),
        new GenerateCommand(),
        new MergeCommand(),
        new BenchCommand(),
        new CorpusCommand(),
        new PretrainCommand(),
        new TrainCommand(),
        new TrainStepCommand(),
        new ServeCommand(),
    ];

    public static int Main(string[] args)
    {
        if (args.Length == 0 || args[0] is "--help" or "-h" or "help")
        {
            PrintOverview(args.Length == 0 ? Console.Error : Console.Out);
            return args.Length == 0 ? 2 : 0;
        }
        var command = Commands.FirstOrDefault(c => c.Name == args[0]);
        if (command is null)
        {
            Console.Error.WriteLine($"smoa: unknown command '{args[0]}'");
            PrintOverview(Console.Error);
            return 2;
        }
        var rest = args[1..];
        if (rest.Contains("--help") || rest.Contains("-h"))
        {
            Console.WriteLine(command.Usage);
            return 0;
        }
        try
        {
            return command.Run(rest);
        }
        catch (UsageException e)
        {
            Console.Error.WriteLine($"smoa {command.Name}: {e.Message}");
            Console.Error.WriteLine();
            Console.Error.WriteLine(command.Usage);
            return 2;
        }
        catch (Microsoft.Extensions.Options.OptionsValidationException e)
        {
            Console.Error.WriteLine($"smoa {command.Name}: error: {string.Join("; ", e.Failures)}");
            return 1;
        }
        catch (Exception e) when (e is IOException or InvalidDataException or ArgumentException or InvalidOperationException or NotSupportedException or UnauthorizedAccessException
                                     or KeyNotFoundException or System.Runtime.InteropServices.ExternalException)
        {
            Console.Error.WriteLine($"smoa {command.Name}: error: {e.Message}");
            return 1;
        }
    }

    private static void PrintOverview(TextWriter w)
    {
        w.WriteLine("smoa: serve and fine-tune SMoA / LoRA adapters on one frozen Llama base model");
        w.WriteLine();
        w.WriteLine("usage: smoa <command> [options]      (smoa <command> --help for its options)");
        w.WriteLine();
        foreach (var c in Commands) w.WriteLine($"  {c.Name,-10} {c.Summary}");
    }
}
