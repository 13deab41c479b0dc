using SmoaServe.Engine.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Model;

/// <summary>
/// Where the weights live and in which dtype the model computes (null dtype: float32 on CPU, bfloat16 on CUDA);
/// <paramref name="Weights"/>: how a float32 CPU model stores the weights its decode kernel streams (see <see cref="CpuGemv"/>).
/// </summary>
public sealed record ModelLoadOptions(Device? Device = null, ScalarType? Dtype = null, WeightStorage Weights = WeightStorage.Float32)
{
    public Device ResolvedDevice => Device ?? torch.CPU;
    public ScalarType ResolvedDtype => Dtype ?? TorchRuntime.DefaultDtype(ResolvedDevice);

    public static ModelLoadOptions Cpu { get; } = new();
}
