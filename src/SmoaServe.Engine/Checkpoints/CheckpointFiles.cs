using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Checkpoints;

/// <summary>
/// The weight files of a Hugging Face checkpoint directory: <c>model.safetensors</c>, or the shards listed in
/// <c>model.safetensors.index.json</c> (weight_map: tensor name → shard file). Each shard is memory-mapped.
/// </summary>
public sealed class CheckpointFiles : IDisposable
{
    private readonly Dictionary<string, SafeTensorsFile> _byName = new(StringComparer.Ordinal);
    private readonly List<SafeTensorsFile> _files = [];

    public string Directory { get; }
    public IReadOnlyCollection<string> Names => _byName.Keys;

    private CheckpointFiles(string dir) => Directory = dir;

    public static CheckpointFiles Open(string dir)
    {
        if (!System.IO.Directory.Exists(dir)) throw new DirectoryNotFoundException($"model directory not found: {dir}");
        var ckpt = new CheckpointFiles(dir);
        try
        {
            string single = Path.Combine(dir, "model.safetensors");
            string index = Path.Combine(dir, "model.safetensors.index.json");
            if (File.Exists(single)) ckpt.AddFile(SafeTensorsFile.Open(single), null);
            else if (File.Exists(index)) ckpt.OpenShards(index);
            else throw new FileNotFoundException($"{dir}: neither model.safetensors nor model.safetensors.index.json exists");
            return ckpt;
        }
        catch
        {
            ckpt.Dispose();
            throw;
        }
    }

    private void OpenShards(string indexPath)
    {
        Dictionary<string, string> weightMap;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(indexPath));
            if (!doc.RootElement.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                throw new InvalidDataException($"{indexPath}: no 'weight_map' object");
            weightMap = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var p in map.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.String) throw new InvalidDataException($"{indexPath}: weight_map['{p.Name}'] is not a file name");
                weightMap[p.Name] = p.Value.GetString()!;
            }
        }
        catch (JsonException e) { throw new InvalidDataException($"{indexPath}: not valid JSON: {e.Message}"); }

        var shards = new Dictionary<string, SafeTensorsFile>(StringComparer.Ordinal);
        foreach (var (name, file) in weightMap)
        {
            if (!shards.TryGetValue(file, out var shard))
            {
                if (file.Length == 0 || file != Path.GetFileName(file) || file is "." or "..")
                    throw new InvalidDataException($"{indexPath}: weight_map['{name}'] = '{file}' is not a plain file name in the checkpoint directory");
                string path = Path.Combine(Directory, file);
                if (!File.Exists(path)) throw new FileNotFoundException($"{indexPath}: shard '{file}' (for '{name}') does not exist", path);
                shards[file] = shard = SafeTensorsFile.Open(path);
                _files.Add(shard);
            }
            if (!shard.Contains(name)) throw new InvalidDataException($"{indexPath}: weight_map says '{name}' is in {file}, but that file has no such tensor");
            _byName[name] = shard;
        }
    }

    private void AddFile(SafeTensorsFile file, string? _)
    {
        _files.Add(file);
        foreach (string name in file.Names) _byName[name] = file;
    }

    public bool Contains(string name) => _byName.ContainsKey(name);

    public SafeTensorInfo Info(string name) => FileOf(name).Info(name);

    /// <summary>The file holding tensor <paramref name="name"/>; a missing tensor is an error naming the checkpoint and key.</summary>
    public SafeTensorsFile FileOf(string name) =>
        _byName.TryGetValue(name, out var f) ? f
            : throw new InvalidDataException($"{Directory}: tensor '{name}' is missing from the checkpoint ({string.Join(", ", _files.Select(x => Path.GetFileName(x.Path)))})");

    public Tensor Read(string name, ScalarType? toDtype = null, Device? device = null) => FileOf(name).ReadTensor(name, toDtype, device);

    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
        _files.Clear();
        _byName.Clear();
    }
}
