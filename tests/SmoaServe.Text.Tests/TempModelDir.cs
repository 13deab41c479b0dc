using System.Text.Json;

namespace SmoaServe.Text.Tests;

/// <summary>A throw-away checkpoint directory for loader tests.</summary>
internal sealed class TempModelDir : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("smoa-text-").FullName;

    public TempModelDir Write(string name, string text) { File.WriteAllText(System.IO.Path.Combine(Path, name), text); return this; }
    public TempModelDir Write(string name, byte[] bytes) { File.WriteAllBytes(System.IO.Path.Combine(Path, name), bytes); return this; }
    public TempModelDir WriteJson(string name, object value) => Write(name, JsonSerializer.Serialize(value));

    public void Dispose() { try { Directory.Delete(Path, recursive: true); } catch (IOException) { } }
}
