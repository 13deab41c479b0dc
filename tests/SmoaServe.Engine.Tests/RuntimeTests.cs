using SmoaServe.Engine.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Tests;

public sealed class RuntimeTests
{
    [Fact]
    public void Cpu_device_and_default_dtypes()
    {
        Assert.Equal(DeviceType.CPU, TorchRuntime.ResolveDevice("cpu").type);
        Assert.Equal(ScalarType.Float32, TorchRuntime.DefaultDtype(torch.CPU));
        Assert.Equal(ScalarType.BFloat16, TorchRuntime.ParseDtype("bfloat16"));
        Assert.Throws<ArgumentException>(() => TorchRuntime.ResolveDevice("tpu"));
        Assert.Throws<ArgumentException>(() => TorchRuntime.ParseDtype("int4"));
    }

    [Fact]
    public void Cuda_without_a_gpu_is_a_clear_error()
    {
        if (torch.cuda.is_available()) return; // a GPU build on a GPU machine: nothing to check here
        var e = Assert.Throws<InvalidOperationException>(() => TorchRuntime.ResolveDevice("cuda"));
        Assert.Contains("CUDA", e.Message);
        Assert.DoesNotContain("\n", e.Message);
    }

    [Fact]
    public void The_libtorch_switch_for_cudnn_attention_binds()
    {
        Assert.True(TorchRuntime.DisableCuDnnAttention());
    }
}
