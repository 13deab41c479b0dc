namespace SmoaServe.Engine.Adapters;

/// <summary>
/// An adapter on its way to the device, prepared off the model thread: its device copies run in bounded pieces, one per
/// <see cref="Step"/>, and <see cref="Commit"/> makes it resident atomically (both on the model thread, between decode
/// steps). Disposing it before the commit undoes what the steps did.
/// </summary>
public interface IAdapterInstall : IDisposable
{
    /// <summary>Copies the next piece to the device; false when nothing is left. Model thread.</summary>
    bool Step();

    /// <summary>Runs any steps left, then makes the adapter resident (replacing one of its id). Model thread.</summary>
    AdapterInfo Commit();
}

/// <summary>An install whose device work is one call at commit (backends without a prepare phase, e.g. test fakes).</summary>
public sealed class DeferredInstall(Func<AdapterInfo> commit) : IAdapterInstall
{
    public bool Step() => false;
    public AdapterInfo Commit() => commit();
    public void Dispose() { }
}
