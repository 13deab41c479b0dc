using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace SmoaServe.Cli.Commands.Hostile;

/// <summary>`smoa serve` as a child process of this executable: its own port, key, data and adapters folders; RSS from /proc.</summary>
public sealed class ServerProcess : IDisposable
{
    private readonly Process _process;
    private readonly System.Text.StringBuilder _log = new();

    public Uri Url { get; }
    public string Key { get; }
    public int Pid => _process.Id;
    public bool HasExited => _process.HasExited;
    public int? ExitCode => _process.HasExited ? _process.ExitCode : null;
    /// <summary>What the server wrote to stdout and stderr so far.</summary>
    public string Log { get { lock (_log) return _log.ToString(); } }

    private ServerProcess(Process process, Uri url, string key)
    {
        _process = process;
        Url = url;
        Key = key;
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (_log) _log.AppendLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (_log) _log.AppendLine(e.Data); };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
    }

    /// <summary>Starts `smoa serve` with <paramref name="serveArgs"/> (plus --urls on a free port) and waits until /health is 200.</summary>
    /// <param name="port">0: a free port</param>
    public static async Task<ServerProcess> StartAsync(IEnumerable<string> serveArgs, string key, IReadOnlyDictionary<string, string>? environment = null,
        int port = 0, TimeSpan? timeout = null)
    {
        if (port == 0) port = FreePort();
        var url = new Uri($"http://127.0.0.1:{port}");
        var (file, prefix) = SelfCommand();
        var info = new ProcessStartInfo(file) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in prefix.Concat(["serve", "--urls", url.ToString().TrimEnd('/')]).Concat(serveArgs)) info.ArgumentList.Add(a);
        info.Environment["SMOA_ADMIN_KEY"] = key;
        foreach (var (k, v) in environment ?? new Dictionary<string, string>()) info.Environment[k] = v;
        var server = new ServerProcess(Process.Start(info) ?? throw new InvalidOperationException("could not start smoa serve"), url, key);
        try
        {
            await server.WaitHealthyAsync(timeout ?? TimeSpan.FromSeconds(120));
            return server;
        }
        catch
        {
            server.Dispose();
            throw;
        }
    }

    /// <summary>How to run this executable again: the apphost itself, or `dotnet smoa.dll` when hosted by dotnet (also under a test runner).</summary>
    private static (string File, string[] Prefix) SelfCommand()
    {
        string dll = typeof(ServerProcess).Assembly.Location;
        string? host = Environment.ProcessPath;
        if (host is not null && Path.GetFileNameWithoutExtension(host) == "smoa") return (host, []);
        string dotnet = host is not null && Path.GetFileNameWithoutExtension(host) == "dotnet" ? host : "dotnet";
        return (dotnet, [dll]);
    }

    public async Task WaitHealthyAsync(TimeSpan timeout)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(2) };
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            if (_process.HasExited) throw new InvalidOperationException($"smoa serve exited with {_process.ExitCode}:\n{Log}");
            try
            {
                if ((await http.GetAsync(new Uri(Url, "/health"))).StatusCode == HttpStatusCode.OK) return;
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException) { }
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"smoa serve not healthy after {timeout.TotalSeconds:F0} s:\n{Log}");
            await Task.Delay(100);
        }
    }

    /// <summary>Resident set size in bytes (/proc/PID/status VmRSS), or -1 where /proc is not available.</summary>
    public long Rss()
    {
        try
        {
            foreach (var line in File.ReadLines($"/proc/{Pid}/status"))
                if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                    return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException) { }
        return -1;
    }

    /// <summary>CPU time the server process has used (user + system).</summary>
    public TimeSpan CpuTime()
    {
        try { _process.Refresh(); return _process.TotalProcessorTime; }
        catch (InvalidOperationException) { return TimeSpan.Zero; }
    }

    /// <summary>SIGKILL: no shutdown code runs.</summary>
    public void Kill()
    {
        if (!_process.HasExited) _process.Kill(entireProcessTree: true);
        _process.WaitForExit(10_000);
    }

    public void Dispose()
    {
        try { Kill(); } catch (InvalidOperationException) { }
        _process.Dispose();
    }

    public static int FreePort()
    {
        var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }
}
