using System.Net;
using System.Security.Cryptography;
using Microsoft.Extensions.Configuration;
using SmoaServe.Server;

namespace SmoaServe.Cli.Commands;

/// <summary>
/// What `smoa serve` fills in when it is started bare: the model (the repository's models/default) and, without any
/// admin key, a one-time key for local use that only works while the server listens on loopback addresses.
/// </summary>
public static class ServeDefaults
{
    public const string DefaultModelPath = "models/default";

    /// <summary>
    /// The configuration the server will see (appsettings.json beside the executable, environment variables, then the
    /// command line), read ahead so that the defaults can be decided before the host is built.
    /// </summary>
    public static IConfiguration Effective(IEnumerable<KeyValuePair<string, string?>> commandLine) =>
        new ConfigurationBuilder()
            .AddJsonFile(Path.Combine(AppContext.BaseDirectory, "appsettings.json"), optional: true)
            .AddEnvironmentVariables("ASPNETCORE_")
            .AddEnvironmentVariables()
            .AddInMemoryCollection(commandLine)
            .Build();

    /// <summary>
    /// models/default/config.json found in the working directory or in a folder above the executable (a checkout's
    /// bin/Release/net10.0, or /app in the container image); null when there is none.
    /// </summary>
    public static string? FindDefaultModel(string workingDirectory, string baseDirectory)
    {
        var candidates = new List<string> { Path.Combine(workingDirectory, DefaultModelPath) };
        for (var dir = new DirectoryInfo(baseDirectory); dir is not null; dir = dir.Parent)
            candidates.Add(Path.Combine(dir.FullName, DefaultModelPath));
        return candidates.FirstOrDefault(c => File.Exists(Path.Combine(c, "config.json")));
    }

    /// <summary>The listen addresses the server will use (the same precedence as the server: Smoa:Urls, then urls, then the default).</summary>
    public static string Urls(IConfiguration c) => c[$"{ServerOptions.Section}:{nameof(ServerOptions.Urls)}"] ?? c["urls"] ?? "http://127.0.0.1:8000";

    public static bool HasAdminKey(IConfiguration c) =>
        !string.IsNullOrEmpty(c[$"{ServerOptions.Section}:{nameof(ServerOptions.AdminKey)}"]) || !string.IsNullOrEmpty(Environment.GetEnvironmentVariable("SMOA_ADMIN_KEY"));

    public static bool AllowsAnonymous(IConfiguration c) =>
        bool.TryParse(c[$"{ServerOptions.Section}:{nameof(ServerOptions.AllowAnonymous)}"], out bool b) && b;

    /// <summary>Every address is loopback (127.0.0.0/8, ::1, localhost): nothing outside this machine can connect.</summary>
    public static bool LoopbackOnly(string urls)
    {
        foreach (var raw in urls.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            // Kestrel accepts "http://*:8000" and "http://+:8000", which Uri does not parse as hosts: those are not loopback
            var url = raw.Replace("://*", "://any-host").Replace("://+", "://any-host");
            if (!Uri.TryCreate(url, UriKind.Absolute, out var uri)) return false;
            if (uri.IsLoopback) continue;
            if (IPAddress.TryParse(uri.Host.Trim('[', ']'), out var ip) && IPAddress.IsLoopback(ip)) continue;
            return false;
        }
        return true;
    }

    /// <summary>A random key, "smoa-local-" and 32 hex digits.</summary>
    public static string NewLocalKey() => "smoa-local-" + Convert.ToHexString(RandomNumberGenerator.GetBytes(16)).ToLowerInvariant();
}
