using SmoaServe.Platform.Adapters;

namespace SmoaServe.Platform.Tests;

public class AdapterNameTests
{
    [Theory]
    [InlineData("a")]
    [InlineData("tenant-a")]
    [InlineData("my_adapter.v2")]
    [InlineData("A1.b-c_D")]
    [InlineData("..a")]
    [InlineData("0123456789012345678901234567890123456789012345678901234567890123")] // 64
    public void Valid_names(string name)
    {
        Assert.True(AdapterName.IsValid(name));
        AdapterName.Validate(name, "base");
    }

    [Theory]
    [InlineData("")]
    [InlineData(".")]
    [InlineData("..")]
    [InlineData("../evil")]
    [InlineData("a/b")]
    [InlineData("a\\b")]
    [InlineData("tenant:name")]
    [InlineData("with space")]
    [InlineData("tab\t")]
    [InlineData("é")]
    [InlineData("01234567890123456789012345678901234567890123456789012345678901234")] // 65
    public void Invalid_names_are_refused_with_the_rule(string name)
    {
        Assert.False(AdapterName.IsValid(name));
        var e = Assert.Throws<ArgumentException>(() => AdapterName.Validate(name));
        Assert.Contains("1-64 characters", e.Message);
    }

    [Fact]
    public void Null_and_the_base_model_id_are_refused()
    {
        Assert.False(AdapterName.IsValid(null));
        var e = Assert.Throws<ArgumentException>(() => AdapterName.Validate("llama", baseModelId: "llama"));
        Assert.Contains("base model", e.Message);
    }

    [Fact]
    public void A_very_long_name_is_shortened_in_the_message()
    {
        var e = Assert.Throws<ArgumentException>(() => AdapterName.Validate(new string('x', 100_000)));
        Assert.True(e.Message.Length < 300);
    }
}
