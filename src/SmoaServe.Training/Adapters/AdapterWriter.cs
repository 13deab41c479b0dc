using SmoaServe.Engine.Adapters;

namespace SmoaServe.Training.Adapters;

/// <summary>
/// Writes a trained adapter as a PEFT / cpeft directory (adapter_config.json + adapter_model.safetensors, SMoA with its
/// smoa_rows / smoa_cols layout tensors) so that it appears whole or not at all: the files are written and fsynced in a
/// sibling temporary directory, which is then renamed into place. An existing directory is swapped out by two renames
/// and deleted, so a reader (e.g. the server's adapter watcher) never sees a config without its weights.
/// </summary>
public static class AdapterWriter
{
    public static void Write(string directory, AdapterDefinition adapter)
    {
        string target = Path.GetFullPath(directory).TrimEnd(Path.DirectorySeparatorChar);
        string parent = Path.GetDirectoryName(target) ?? throw new ArgumentException($"'{directory}' has no parent directory");
        Directory.CreateDirectory(parent);
        if (File.Exists(target)) throw new IOException($"{target} exists and is a file");
        string name = Path.GetFileName(target);
        string temp = Path.Combine(parent, $".{name}.{Guid.NewGuid():N}.tmp");
        string? old = null;
        try
        {
            AdapterFiles.Write(temp, adapter);
            foreach (var file in Directory.GetFiles(temp)) Fsync(file);
            if (Directory.Exists(target))
            {
                old = Path.Combine(parent, $".{name}.{Guid.NewGuid():N}.old");
                Directory.Move(target, old);
            }
            Directory.Move(temp, target);
        }
        catch
        {
            if (old is not null && !Directory.Exists(target)) TryMove(old, target);   // put the previous adapter back
            TryDelete(temp);
            throw;
        }
        if (old is not null) TryDelete(old);
    }

    private static void Fsync(string path)
    {
        using var fs = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.Read);
        fs.Flush(flushToDisk: true);
    }

    private static void TryMove(string from, string to)
    {
        try { Directory.Move(from, to); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    private static void TryDelete(string dir)
    {
        try { if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
