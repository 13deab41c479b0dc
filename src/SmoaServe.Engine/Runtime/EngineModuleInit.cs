using System.Runtime.CompilerServices;

namespace SmoaServe.Engine.Runtime;

internal static class EngineModuleInit
{
    /// <summary>
    /// Runs when the engine assembly is first used, normally before libtorch is loaded, so the OpenMP wait policy
    /// (see <see cref="TorchRuntime.PreferPassiveOpenMpWait"/>) applies to every host: CLI, server, tests.
    /// </summary>
#pragma warning disable CA2255 // a library module initializer is intended here
    [ModuleInitializer]
    internal static void Init() => TorchRuntime.PreferPassiveOpenMpWait();
#pragma warning restore CA2255
}
