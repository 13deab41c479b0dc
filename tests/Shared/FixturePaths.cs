namespace SmoaServe.Tests;

/// <summary>Locates the reference fixtures copied unchanged into tests/fixtures (see tests/fixtures/README.md).</summary>
public static class FixturePaths
{
    public static string RepoRoot { get; } = FindRepoRoot();

    public static string Fixtures => Path.Combine(RepoRoot, "tests", "fixtures");

    /// <summary>The tiny Llama checkpoint written by Hugging Face transformers.</summary>
    public static string LlamaA => Path.Combine(Fixtures, "llama-a");

    private static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "SmoaServe.sln"))) return dir.FullName;
        throw new DirectoryNotFoundException("SmoaServe.sln not found above " + AppContext.BaseDirectory);
    }
}
