using SmoaServe.Text.Tokenizers;

namespace SmoaServe.Text.Tests;

public sealed class BpeTrainerTests
{
    private static readonly string[] Texts =
    [
        "The dog barked all night. The dog is a member of the genus Canis.",
        "A cat is a small domesticated carnivore. The cat sat on the mat.",
        "Bread is food made from dough of flour or meal. The baker baked bread.",
        "Héllo wörld — naïve café, 42 apples and 1234567 pears!\n\nNew paragraph\twith a tab.",
    ];

    private static string TrainTo(TempModelDir dir, int vocab)
    {
        var result = BpeTrainer.Train(Enumerable.Repeat(Texts, 5).SelectMany(t => t), vocab, ["<|begin_of_text|>", "<|eot_id|>"]);
        BpeTrainer.WriteTokenizerJson(Path.Combine(dir.Path, "tokenizer.json"), result, "<|begin_of_text|>");
        dir.WriteJson("tokenizer_config.json", new Dictionary<string, string> { ["bos_token"] = "<|begin_of_text|>", ["eos_token"] = "<|eot_id|>" });
        return dir.Path;
    }

    [Fact]
    public void Trained_tokenizer_loads_through_the_Hugging_Face_loader_and_round_trips_any_text()
    {
        using var dir = new TempModelDir();
        var tokenizer = TokenizerLoader.Load(TrainTo(dir, 400));
        Assert.Equal(400, tokenizer.VocabSize);
        foreach (var text in Texts.Append("unseen wörds: zebra-crossing 9876 ✓ 😀"))
        {
            var ids = tokenizer.Encode(text, addSpecialTokens: false);
            Assert.Equal(text, tokenizer.Decode(ids));
        }
        // the specials take the last ids; BOS is prepended by the post-processor
        Assert.Equal(398, tokenizer.TokenToId("<|begin_of_text|>"));
        Assert.Equal(399, tokenizer.TokenToId("<|eot_id|>"));
        Assert.Equal(398, tokenizer.Encode("dog", addSpecialTokens: true)[0]);
        Assert.Equal([399], tokenizer.Encode("<|eot_id|>", addSpecialTokens: false));
    }

    [Fact]
    public void Frequent_words_become_single_tokens_and_training_is_deterministic()
    {
        using var a = new TempModelDir();
        using var b = new TempModelDir();
        var tokenizer = TokenizerLoader.Load(TrainTo(a, 400));
        Assert.Single(tokenizer.Encode(" dog", addSpecialTokens: false));
        Assert.Single(tokenizer.Encode("The", addSpecialTokens: false));
        Assert.True(tokenizer.Encode("The dog barked all night.", addSpecialTokens: false).Count <= 8);
        TrainTo(b, 400);
        Assert.Equal(File.ReadAllText(Path.Combine(a.Path, "tokenizer.json")), File.ReadAllText(Path.Combine(b.Path, "tokenizer.json")));
    }
}
