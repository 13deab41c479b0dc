using SmoaServe.Cli.Commands;

namespace SmoaServe.Cli.Tests;

public class ServeCommandTests
{
    [Theory]
    [InlineData(new[] { "--max-running", "many" }, "not an integer")]
    [InlineData(new[] { "stray" }, "unexpected argument")]
    [InlineData(new[] { "--model", "x", "--adapter", "noequals" }, "NAME=DIR")]
    [InlineData(new[] { "--model", "x", "--max-running", "many" }, "not an integer")]
    [InlineData(new[] { "--model", "x", "--bogus", "1" }, "unknown option")]
    public void Serve_command_line_errors_are_usage_errors(string[] args, string message)
    {
        var e = Assert.Throws<UsageException>(() => new ServeCommand().Run(args));
        Assert.Contains(message, e.Message);
    }
}
