using Polly;

namespace SmoaServe.Platform.Storage;

/// <summary>
/// Adapter files under the data directory: <c>&lt;data&gt;/adapters/&lt;owner&gt;/&lt;name&gt;/</c> (owner = a tenant id, or
/// <c>_admin</c>). A new adapter is written into <c>.staging/&lt;random&gt;/</c>, validated there, flushed to disk and then
/// renamed into place in one step, so a crash leaves either nothing or the whole adapter; <see cref="Reconcile"/> removes
/// what a crash left behind (staging folders, folders without a catalog row). File operations retry transient faults.
/// </summary>
public sealed class AdapterFileStore
{
    public const string AdminFolder = "_admin";
    private const string Staging = ".staging", Trash = ".trash";
    private readonly ResiliencePipeline _retry;

    public AdapterFileStore(string dataDirectory, ResiliencePipeline? retry = null)
    {
        Root = Path.Combine(Path.GetFullPath(dataDirectory), "adapters");
        Directory.CreateDirectory(Root);
        _retry = retry ?? TransientRetry.Create();
    }

    public string Root { get; }

    public string DirectoryOf(string owner, string name) => Path.Combine(Root, OwnerFolder(owner), name);

    /// <summary>A new empty folder to write an upload into (same file system as the final place, so the rename is atomic).</summary>
    public string CreateStaging()
    {
        string dir = Path.Combine(Root, Staging, Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        return dir;
    }

    /// <summary>
    /// Flushes every file of <paramref name="staging"/> to disk and renames the folder to the adapter's place.
    /// Throws <see cref="IOException"/> when that place is taken.
    /// </summary>
    public string Commit(string staging, string owner, string name)
    {
        foreach (var file in Directory.EnumerateFiles(staging))
        {
            using var handle = File.OpenHandle(file, FileMode.Open, FileAccess.ReadWrite);
            RandomAccess.FlushToDisk(handle);
        }
        string target = DirectoryOf(owner, name);
        Directory.CreateDirectory(Path.GetDirectoryName(target)!);
        if (Directory.Exists(target)) throw new IOException($"adapter folder {target} already exists");
        _retry.Execute(() => Directory.Move(staging, target));
        return target;
    }

    /// <summary>Removes a folder: renamed away first (so it vanishes at once and whole), then deleted.</summary>
    public void Delete(string directory)
    {
        if (!IsInside(directory) || !Directory.Exists(directory)) return;
        string trash = Path.Combine(Root, Trash, Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path.GetDirectoryName(trash)!);
        _retry.Execute(() => Directory.Move(directory, trash));
        DeleteQuietly(trash);
    }

    /// <summary>Deletes every adapter folder of an owner (a deleted tenant).</summary>
    public void DeleteOwner(string owner) => Delete(Path.Combine(Root, OwnerFolder(owner)));

    public void DeleteStaging(string staging)
    {
        if (IsInside(staging)) DeleteQuietly(staging);
    }

    /// <summary>
    /// After a crash: empties the staging and trash folders, and deletes adapter folders that no catalog row names
    /// (<paramref name="known"/>: the directories of stored adapters). Returns the deleted folders.
    /// </summary>
    public IReadOnlyList<string> Reconcile(IEnumerable<string> known)
    {
        var keep = new HashSet<string>(known.Select(Path.GetFullPath), StringComparer.Ordinal);
        var removed = new List<string>();
        foreach (var special in new[] { Staging, Trash })
        {
            string dir = Path.Combine(Root, special);
            if (Directory.Exists(dir)) { DeleteQuietly(dir); removed.Add(dir); }
        }
        foreach (var owner in Directory.EnumerateDirectories(Root))
        {
            foreach (var adapter in Directory.EnumerateDirectories(owner))
                if (!keep.Contains(Path.GetFullPath(adapter))) { DeleteQuietly(adapter); removed.Add(adapter); }
            if (!Directory.EnumerateFileSystemEntries(owner).Any()) DeleteQuietly(owner);
        }
        return removed;
    }

    private static string OwnerFolder(string owner) => owner.Length == 0 ? AdminFolder : owner;

    private bool IsInside(string path) => Path.GetFullPath(path).StartsWith(Root + Path.DirectorySeparatorChar, StringComparison.Ordinal);

    private void DeleteQuietly(string dir)
    {
        try { _retry.Execute(() => { if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true); }); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { /* removed at the next start */ }
    }
}
