using SmoaServe.Engine.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Model;

/// <summary>Where the weights live and in which dtype the model computes (null dtype: float32 on CPU, bfloat16 on CUDA).</summary>
public sealed record ModelLoadOptions(Device? Device = null, ScalarType? Dtype = null)
{
    public Device ResolvedDevice => Device ?? torch.CPU;
    public ScalarType ResolvedDtype => Dtype ?? TorchRuntime.DefaultDtype(ResolvedDevice);

    public static ModelLoadOptions Cpu { get; } = new();
}
