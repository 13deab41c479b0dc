using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Runtime;

/// <summary>Device / dtype selection and libtorch thread settings.</summary>
public static class TorchRuntime
{
    /// <summary>
    /// Asks libtorch's OpenMP (libgomp) to sleep rather than spin while waiting, unless OMP_WAIT_POLICY is already set.
    /// Spinning threads collapse throughput when the cores are shared (measured here: 1.5 vs 17.6 tokens/s on a busy
    /// 2-core machine). Only effective before libtorch is loaded, i.e. before the first torch call of the process;
    /// the native environment is set with libc's setenv because .NET's Environment does not reach native getenv.
    /// </summary>
    public static void PreferPassiveOpenMpWait()
    {
        if (!OperatingSystem.IsLinux() || Environment.GetEnvironmentVariable("OMP_WAIT_POLICY") is not null) return;
        try { _ = setenv("OMP_WAIT_POLICY", "PASSIVE", 0); }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { /* not glibc: leave the default */ }
    }

    /// <summary>
    /// Turns off the cuDNN backend of scaled_dot_product_attention (flash / memory-efficient remain). cuDNN builds an
    /// execution plan per new shape, tens of milliseconds each, so every new prompt length paid it in prefill.
    /// TorchSharp has no switch for it, so this calls libtorch's at::globalContext().setSDPUseCuDNN(false) directly.
    /// Returns false (and changes nothing) when the symbols are not there. SMOA_CUDNN_SDPA=1 keeps cuDNN attention.
    /// </summary>
    public static bool DisableCuDnnAttention()
    {
        try
        {
            SetSdpUseCuDnn(GlobalContext(), false);
            return true;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return false; }
    }

    [DllImport("torch_cpu", EntryPoint = "_ZN2at13globalContextEv")]
    private static extern IntPtr GlobalContext();

    [DllImport("torch_cpu", EntryPoint = "_ZN2at7Context14setSDPUseCuDNNEb")]
    private static extern void SetSdpUseCuDnn(IntPtr context, [MarshalAs(UnmanagedType.U1)] bool enabled);

    [DllImport("libc", EntryPoint = "setenv")]
    private static extern int setenv(string name, string value, int overwrite);

    /// <summary>"cpu" or "cuda" / "cuda:N". CUDA is initialised explicitly; no CUDA gives a clear error.</summary>
    public static Device ResolveDevice(string name)
    {
        PreferPassiveOpenMpWait();
        string n = name.Trim().ToLowerInvariant();
        if (n == "cpu") return torch.CPU;
        if (n == "cuda" || n.StartsWith("cuda:", StringComparison.Ordinal))
        {
            int index = 0;
            if (n.Length > 5 && !int.TryParse(n.AsSpan(5), out index))
                throw new ArgumentException($"device '{name}': expected cuda or cuda:N");
            try { torch.InitializeDeviceType(DeviceType.CUDA); }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                string reason = e.Message.Split('\n')[0].Trim();
                throw new InvalidOperationException($"device '{name}': CUDA could not be initialised ({reason}). Is this the CUDA build of smoa, on a machine with a GPU?", e);
            }
            if (!torch.cuda.is_available())
                throw new InvalidOperationException($"device '{name}': CUDA is not available on this machine (CPU build of libtorch, or no GPU/driver)");
            int count = torch.cuda.device_count();
            if (index < 0 || index >= count) throw new ArgumentException($"device '{name}': only {count} CUDA device(s)");
            if (Environment.GetEnvironmentVariable("SMOA_CUDNN_SDPA") != "1") DisableCuDnnAttention();
            return torch.device(DeviceType.CUDA, index);
        }
        throw new ArgumentException($"device '{name}': expected cpu or cuda");
    }

    /// <summary>float32 on CPU (bf16 GEMV is slower there), bfloat16 on CUDA.</summary>
    public static ScalarType DefaultDtype(Device device) => device.type == DeviceType.CUDA ? ScalarType.BFloat16 : ScalarType.Float32;

    public static ScalarType ParseDtype(string name) => name.Trim().ToLowerInvariant() switch
    {
        "float32" or "fp32" or "f32" => ScalarType.Float32,
        "bfloat16" or "bf16" => ScalarType.BFloat16,
        "float16" or "fp16" or "f16" => ScalarType.Float16,
        _ => throw new ArgumentException($"dtype '{name}': expected float32 or bfloat16"),
    };

    public static string DtypeName(ScalarType t) => t switch
    {
        ScalarType.Float32 => "float32", ScalarType.BFloat16 => "bfloat16", ScalarType.Float16 => "float16", _ => t.ToString(),
    };

    /// <summary>Sets libtorch's intra-op threads (0 or less: leave libtorch's default, one per core).</summary>
    public static void ConfigureThreads(int threads)
    {
        PreferPassiveOpenMpWait();
        if (threads > 0) torch.set_num_threads(threads);
    }
}
