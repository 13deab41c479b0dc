using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.Data.Sqlite;

namespace SmoaServe.Cli.Tests;

/// <summary>`smoa serve` as a real process (the built smoa.dll) on llama-a with a data directory of its own.</summary>
public sealed class ServeProcess : IAsyncDisposable
{
    public const string AdminKey = "restart-admin-key";
    private readonly Process _process;
    private readonly StringBuilder _output = new();
    public Uri BaseAddress { get; }
    public HttpClient Http { get; }

    private ServeProcess(string dataDir, int port, IReadOnlyDictionary<string, string>? environment)
    {
        BaseAddress = new Uri($"http://127.0.0.1:{port}");
        var start = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        foreach (var a in new[] { Path.Combine(AppContext.BaseDirectory, "smoa.dll"), "serve", "--model", FixturePaths.LlamaA, "--data", dataDir,
                     "--urls", BaseAddress.ToString().TrimEnd('/'), "--adapters-dir", Path.Combine(dataDir, "no-adapters-dir") })
            start.ArgumentList.Add(a);
        start.Environment["SMOA_ADMIN_KEY"] = AdminKey;
        start.Environment["Serilog__MinimumLevel__Default"] = "Warning";
        foreach (var (name, value) in environment ?? new Dictionary<string, string>()) start.Environment[name] = value;
        _process = Process.Start(start)!;
        _process.OutputDataReceived += (_, e) => { lock (_output) _output.AppendLine(e.Data); };
        _process.ErrorDataReceived += (_, e) => { lock (_output) _output.AppendLine(e.Data); };
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
        Http = new HttpClient { BaseAddress = BaseAddress, Timeout = TimeSpan.FromSeconds(60) };
    }

    public string Output { get { lock (_output) return _output.ToString(); } }

    /// <param name="environment">extra environment variables (e.g. Smoa__FineTuneCheckpointSteps)</param>
    public static async Task<ServeProcess> StartAsync(string dataDir, IReadOnlyDictionary<string, string>? environment = null)
    {
        var p = new ServeProcess(dataDir, FreePort(), environment);
        var deadline = DateTime.UtcNow.AddSeconds(90);
        while (DateTime.UtcNow < deadline)
        {
            if (p._process.HasExited) throw new InvalidOperationException("smoa serve exited: " + p.Output);
            try
            {
                if ((await p.Http.GetAsync("/health")).StatusCode == HttpStatusCode.OK) return p;
            }
            catch (HttpRequestException) { }
            await Task.Delay(100);
        }
        await p.DisposeAsync();
        throw new TimeoutException("smoa serve did not become healthy: " + p.Output);
    }

    private const int SigTerm = 15;

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int SendSignal(int pid, int signal);

    /// <summary>A graceful stop (SIGTERM), as an orchestrator does.</summary>
    public async Task StopAsync()
    {
        // libc's kill(2), not the kill executable: a minimal system (procps not installed) has none
        if (SendSignal(_process.Id, SigTerm) != 0) throw new InvalidOperationException($"kill({_process.Id}, SIGTERM) failed: errno {System.Runtime.InteropServices.Marshal.GetLastPInvokeError()}");
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await _process.WaitForExitAsync(timeout.Token);
    }

    /// <summary>kill -9: no shutdown code runs.</summary>
    public async Task KillAsync()
    {
        _process.Kill();
        await _process.WaitForExitAsync();
    }

    private static int FreePort()
    {
        var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        if (!_process.HasExited) await KillAsync();
        _process.Dispose();
    }
}

/// <summary>Restart safety of the adapter store, with real processes: a graceful restart, and kill -9 in the middle of an upload.</summary>
public sealed class RestartTests : IDisposable
{
    private static readonly string Lora = Path.Combine(FixturePaths.LlamaA, "lora-adapter");
    private static readonly string Smoa = Path.Combine(FixturePaths.LlamaA, "smoa-adapter");
    private readonly string _data = Path.Combine(Path.GetTempPath(), "smoa-restart-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_data)) Directory.Delete(_data, true);
    }

    [Fact]
    public async Task Uploaded_adapters_answer_identically_after_a_restart()
    {
        string key, loraAnswer, smoaAnswer;
        await using (var first = await ServeProcess.StartAsync(_data))
        {
            var api = new TenantApi(first.Http);
            (_, key) = await api.CreateTenant(ServeProcess.AdminKey, "durable");
            Assert.Equal(HttpStatusCode.Created, (await api.UploadDirectory(key, "my-lora", Lora)).Status);
            Assert.Equal(HttpStatusCode.Created, (await api.UploadDirectory(key, "my-smoa", Smoa)).Status);
            loraAnswer = await api.Complete(key, "my-lora", "Once upon a time", 8);
            smoaAnswer = await api.Complete(key, "my-smoa", "Once upon a time", 8);
            await first.StopAsync();
        }
        await using var second = await ServeProcess.StartAsync(_data);
        var again = new TenantApi(second.Http);
        Assert.Equal(["my-lora", "my-smoa"], (await again.AdapterIds(key)).Order());
        Assert.Equal(loraAnswer, await again.Complete(key, "my-lora", "Once upon a time", 8));
        Assert.Equal(smoaAnswer, await again.Complete(key, "my-smoa", "Once upon a time", 8));
        Assert.Equal(loraAnswer, await again.Complete(ServeProcess.AdminKey, "durable/my-lora", "Once upon a time", 8));
    }

    [Fact]
    public async Task Kill_9_during_an_upload_leaves_no_partial_adapter_and_a_consistent_catalog()
    {
        string key, tenantId, keptAnswer;
        await using (var first = await ServeProcess.StartAsync(_data))
        {
            var api = new TenantApi(first.Http);
            (tenantId, key) = await api.CreateTenant(ServeProcess.AdminKey, "crashy");
            Assert.Equal(HttpStatusCode.Created, (await api.UploadDirectory(key, "kept", Lora)).Status);
            keptAnswer = await api.Complete(key, "kept", "Hello there", 6);

            // an upload whose body stops half way through the weights: the server has staged part of it when it dies
            var stalled = new StalledContent(File.ReadAllBytes(Path.Combine(Lora, "adapter_model.safetensors")));
            var form = new MultipartFormDataContent
            {
                { new StringContent("partial"), "name" },
                { new ByteArrayContent(File.ReadAllBytes(Path.Combine(Lora, "adapter_config.json"))), "adapter_config.json", "adapter_config.json" },
                { stalled, "adapter_model.safetensors", "adapter_model.safetensors" },
            };
            using var req = new HttpRequestMessage(HttpMethod.Post, "/v1/adapters") { Content = form };
            req.Headers.Authorization = new("Bearer", key);
            var upload = first.Http.SendAsync(req);
            await stalled.Started.WaitAsync(TimeSpan.FromSeconds(30));
            string staging = Path.Combine(_data, "adapters", ".staging");
            for (int i = 0; i < 200 && !(Directory.Exists(staging) && Directory.EnumerateFiles(staging, "*", SearchOption.AllDirectories).Any()); i++)
                await Task.Delay(25);
            Assert.True(Directory.EnumerateFiles(staging, "*", SearchOption.AllDirectories).Any(), "the upload was not being staged");
            await first.KillAsync();
            stalled.Abort();
            await Assert.ThrowsAnyAsync<Exception>(() => upload);
        }

        await using var second = await ServeProcess.StartAsync(_data);
        var again = new TenantApi(second.Http);
        Assert.Equal(["kept"], await again.AdapterIds(key));
        Assert.Equal(keptAnswer, await again.Complete(key, "kept", "Hello there", 6));
        Assert.False(Directory.Exists(Path.Combine(_data, "adapters", ".staging")) &&
                     Directory.EnumerateFileSystemEntries(Path.Combine(_data, "adapters", ".staging")).Any());
        Assert.Equal(["kept"], Directory.EnumerateDirectories(Path.Combine(_data, "adapters", tenantId)).Select(Path.GetFileName));
        // the catalog holds exactly the adapters on disk
        using (var db = new SqliteConnection($"Data Source={Path.Combine(_data, "smoa.db")};Mode=ReadOnly"))
        {
            db.Open();
            using var cmd = db.CreateCommand();
            cmd.CommandText = "SELECT name, directory FROM adapters";
            using var r = cmd.ExecuteReader();
            var rows = new List<(string, string)>();
            while (r.Read()) rows.Add((r.GetString(0), r.GetString(1)));
            var (name, dir) = Assert.Single(rows);
            Assert.Equal("kept", name);
            Assert.True(File.Exists(Path.Combine(dir, "adapter_model.safetensors")));
        }
        SqliteConnection.ClearAllPools();
        // the name the dead upload wanted is free
        Assert.Equal(HttpStatusCode.Created, (await again.UploadDirectory(key, "partial", Lora)).Status);
    }

    /// <summary>Sends the first half of its bytes, then waits forever (until the connection dies).</summary>
    private sealed class StalledContent(byte[] bytes) : HttpContent
    {
        private readonly TaskCompletionSource _started = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly CancellationTokenSource _abort = new();
        public Task Started => _started.Task;
        public void Abort() => _abort.Cancel();

        protected override async Task SerializeToStreamAsync(Stream stream, TransportContext? context)
        {
            await stream.WriteAsync(bytes.AsMemory(0, bytes.Length / 2));
            await stream.FlushAsync();
            _started.TrySetResult();
            await Task.Delay(Timeout.Infinite, _abort.Token);
        }

        protected override bool TryComputeLength(out long length)
        {
            length = bytes.Length;
            return true;
        }
    }
}
