namespace SmoaServe.Server;

/// <summary>The served base model's id and the server's lifecycle: loading → ready (or failed) → draining.</summary>
public sealed class ServerStatus(string baseModelId)
{
    private readonly TaskCompletionSource _loaded = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public string BaseModelId { get; } = baseModelId;
    public DateTimeOffset CreatedAt { get; } = DateTimeOffset.UtcNow;

    /// <summary>Completes when the base model and the preloaded adapters are ready (/health turns 200).</summary>
    public Task Loaded => _loaded.Task;
    public bool IsLoaded => _loaded.Task.IsCompletedSuccessfully;
    /// <summary>Set at shutdown: new generation requests get 503 while in-flight ones finish.</summary>
    public volatile bool Draining;

    public void MarkLoaded() => _loaded.TrySetResult();
    public void MarkFailed(Exception e) => _loaded.TrySetException(e);
}
