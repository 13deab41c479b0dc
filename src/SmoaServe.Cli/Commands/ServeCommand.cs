using Microsoft.Extensions.DependencyInjection;
using SmoaServe.Server;

namespace SmoaServe.Cli.Commands;

/// <summary>`smoa serve`: the OpenAI-compatible server (SmoaServe.Server). Options override appsettings.json and SMOA__* variables.</summary>
public sealed class ServeCommand : ICommand
{
    public string Name => "serve";
    public string Summary => "serve the base model and its adapters over an OpenAI-compatible HTTP API";
    public string Usage => """
        usage: smoa serve [--model DIR] [options]

          --model DIR               checkpoint directory (config.json, safetensors, tokenizer.json); default: the
                                    repository's models/default (the small bundled model)
          --served-model-name NAME  id of the base model in the API (default: the directory's name)
          --urls URL                listen address(es), ';'-separated (default ASPNETCORE_URLS, else http://127.0.0.1:8000)
          --data DIR                data directory: SMoA layout cache (default ./data)
          --device cpu|cuda         (default cpu)
          --dtype float32|bfloat16|float16   compute dtype (default: float32 on CPU, bfloat16 on CUDA)
          --smoa-form anchored|folded   how SMoA adapters are applied (default: anchored on CPU, folded on CUDA)
          --weights-dtype float32|bf16|int8   CPU float32 models: storage of the weights decode streams (default float32)
          --adapter NAME=DIR        preload an adapter (repeatable)
          --adapters-dir DIR        every sub-directory is served under its name, watched for changes (default ./adapters)
          --max-running N           KV slots = most sequences in the running batch (default 16)
          --max-batched-tokens N    token budget per step, decode rows + prefill chunks (default 256)
          --max-prefill-chunk N     longest prefill chunk of one prompt per step (default 128)
          --max-queued N            waiting requests before 429 (default 256)
          --max-model-len N         context per slot (default: min(max_position_embeddings, 4096))
          --max-device-adapters N   adapters on the device at once; others wait on the host or disk, loaded on first use (default: no limit)
          --max-device-adapter-bytes B   device bytes of adapter factors at once (default: no limit)
          --max-host-adapter-bytes B     host memory for validated adapters in front of the disk (default 2 GiB)
          --max-queued-per-tenant N waiting requests per tenant before 429 (default: only --max-queued)
          --max-upload-bytes B      largest adapter upload, POST /v1/adapters (default 512 MiB)
          --no-fair-share           first come, first served instead of equal shares of the batch per tenant
          --log-format text|json    console log format (default text)
          --allow-anonymous         no API key needed (local use only)

        The admin API key comes from SMOA_ADMIN_KEY (or Smoa:AdminKey in appsettings.json); clients send
        'Authorization: Bearer <key>'. Without any key (and without --allow-anonymous) the server makes up a one-time
        key, prints it, and refuses to listen on anything but loopback addresses. Every option is also a setting "Smoa:<Name>" (env SMOA__<NAME>), e.g.
        SMOA__MAXRUNNING=32, SMOA__ADAPTERS__mine=/path.
        """;

    private static readonly (string Option, string Key)[] Settings =
    [
        ("model", "Model"), ("served-model-name", "ServedModelName"), ("urls", "Urls"), ("data", "Data"), ("device", "Device"),
        ("dtype", "Dtype"), ("adapters-dir", "AdaptersDir"), ("max-running", "MaxRunning"), ("max-batched-tokens", "MaxBatchedTokens"),
        ("max-prefill-chunk", "MaxPrefillChunk"), ("max-queued", "MaxQueued"), ("max-model-len", "MaxModelLen"),
        ("log-format", "LogFormat"), ("smoa-form", "SmoaForm"), ("weights-dtype", "WeightsDtype"), ("max-device-adapters", "MaxDeviceAdapters"),
        ("max-device-adapter-bytes", "MaxDeviceAdapterBytes"), ("max-host-adapter-bytes", "MaxHostAdapterBytes"),
        ("max-queued-per-tenant", "MaxQueuedPerTenant"), ("max-upload-bytes", "MaxUploadBytes"),
    ];

    public int Run(string[] args)
    {
        var cli = CliArgs.Parse(args, Settings.Select(s => s.Option).Append("adapter"), ["allow-anonymous", "no-fair-share"]);
        if (cli.Positionals.Count > 0) throw new UsageException($"unexpected argument '{cli.Positionals[0]}'");
        var config = new Dictionary<string, string?>();
        foreach (var (option, key) in Settings)
            if (cli.Get(option) is { } v) config[$"{ServerOptions.Section}:{key}"] = v;
        foreach (var (option, _) in Settings.Where(s => s.Option.StartsWith("max-", StringComparison.Ordinal) && !s.Option.EndsWith("-bytes", StringComparison.Ordinal)))
            cli.GetInt(option, 0);
        foreach (var (option, _) in Settings.Where(s => s.Option.EndsWith("-bytes", StringComparison.Ordinal)))
            if (cli.Get(option) is { } v && !long.TryParse(v, out _)) throw new UsageException($"--{option} expects a number of bytes, got '{v}'");
        if (cli.Flag("no-fair-share")) config[$"{ServerOptions.Section}:FairShare"] = "false";
        if (cli.Flag("allow-anonymous")) config[$"{ServerOptions.Section}:AllowAnonymous"] = "true";
        var adapters = cli.All("adapter").Select(ParseAdapter).ToList();

        var effective = ServeDefaults.Effective(config);
        if (effective[$"{ServerOptions.Section}:Model"] is null)
        {
            var model = ServeDefaults.FindDefaultModel(Environment.CurrentDirectory, AppContext.BaseDirectory)
                ?? throw new UsageException($"--model is required (no {ServeDefaults.DefaultModelPath} found in this folder or above the executable)");
            config[$"{ServerOptions.Section}:Model"] = model;
            Console.Error.WriteLine($"smoa serve: serving the bundled model {Path.GetFullPath(model)} (choose another with --model DIR)");
        }
        if (!ServeDefaults.HasAdminKey(effective) && !ServeDefaults.AllowsAnonymous(effective))
        {
            string urls = ServeDefaults.Urls(effective);
            if (!ServeDefaults.LoopbackOnly(urls))
            {
                Console.Error.WriteLine($"smoa serve: error: listening on {urls} needs an admin key: set SMOA_ADMIN_KEY (or Smoa:AdminKey)");
                return 1;
            }
            string key = ServeDefaults.NewLocalKey();
            config[$"{ServerOptions.Section}:AdminKey"] = key;
            Console.Error.WriteLine($"smoa serve: SMOA_ADMIN_KEY is not set; this run's admin key (loopback only, new at every start):");
            Console.Error.WriteLine($"    export SMOA_ADMIN_KEY={key}");
        }

        var app = SmoaServer.Build(config, o => { foreach (var (name, dir) in adapters) o.Adapters[name] = dir; },
            configureEngine: o => { if (o.Model is null) throw new UsageException("--model is required (or Smoa:Model / SMOA__MODEL)"); });
        var loaded = app.Services.GetRequiredService<ServerStatus>().Loaded;
        try
        {
            app.Run();
        }
        catch (OperationCanceledException) when (loaded.IsFaulted)
        {
            // stopped during start-up because the model failed to load (already logged)
        }
        if (loaded.IsFaulted) { Console.Error.WriteLine($"smoa serve: error: {loaded.Exception!.InnerException?.Message}"); return 1; }
        return Environment.ExitCode;
    }

    private static (string Name, string Dir) ParseAdapter(string spec)
    {
        int eq = spec.IndexOf('=');
        if (eq <= 0 || eq == spec.Length - 1) throw new UsageException($"--adapter expects NAME=DIR, got '{spec}'");
        return (spec[..eq], spec[(eq + 1)..]);
    }
}
