using SmoaServe.Tests;

namespace SmoaServe.Text.Tests;

public class FixtureSmokeTests
{
    [Fact]
    public void FixturesAreInTheRepository() =>
        Assert.True(File.Exists(Path.Combine(FixturePaths.LlamaA, "tokenizer.json")));
}
