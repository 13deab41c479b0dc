namespace SmoaServe.Platform.FineTuning;

/// <summary>
/// Uploaded files under <c>&lt;data&gt;/files/&lt;id&gt;.jsonl</c>. An upload is written to a temporary file in the same
/// folder, flushed to disk and renamed into place, so a crash leaves the whole file or none; temporary files left by
/// a crash, and files no row names, are removed by <see cref="Reconcile"/>.
/// </summary>
public sealed class TrainingFileStore
{
    private const string TempSuffix = ".part";

    public TrainingFileStore(string dataDirectory)
    {
        Root = Path.Combine(Path.GetFullPath(dataDirectory), "files");
        Directory.CreateDirectory(Root);
    }

    public string Root { get; }

    /// <summary>A new temporary file to write an upload into; pass it to <see cref="Commit"/> or <see cref="Discard"/>.</summary>
    public string CreateTemp() => Path.Combine(Root, Guid.NewGuid().ToString("N") + TempSuffix);

    /// <summary>Flushes the temporary file to disk and renames it to the file's place; returns that path.</summary>
    public string Commit(string temp, string id)
    {
        using (var handle = File.OpenHandle(temp, FileMode.Open, FileAccess.ReadWrite)) RandomAccess.FlushToDisk(handle);
        string target = PathOf(id);
        File.Move(temp, target, overwrite: false);
        return target;
    }

    public void Discard(string temp)
    {
        try { if (IsInside(temp)) File.Delete(temp); } catch (IOException) { }
    }

    public string PathOf(string id) => Path.Combine(Root, id + ".jsonl");

    public void Delete(string path)
    {
        try { if (IsInside(path)) File.Delete(path); } catch (IOException) { /* removed by the next Reconcile */ }
    }

    /// <summary>
    /// Deletes temporary files and files that no row names (<paramref name="known"/>: the paths of stored files), last
    /// written before <paramref name="olderThanUtc"/> (uploads of the running process are left alone).
    /// </summary>
    public void Reconcile(IEnumerable<string> known, DateTime olderThanUtc)
    {
        var keep = new HashSet<string>(known.Select(Path.GetFullPath), StringComparer.Ordinal);
        foreach (var file in Directory.EnumerateFiles(Root))
            if (!keep.Contains(Path.GetFullPath(file)) && File.GetLastWriteTimeUtc(file) < olderThanUtc) Delete(file);
    }

    private bool IsInside(string path) => Path.GetFullPath(path).StartsWith(Root + Path.DirectorySeparatorChar, StringComparison.Ordinal);
}
