using System.Text.Json;
using SmoaServe.Text;
using SmoaServe.Training.Data;
using static SmoaServe.Training.Tests.TestSupport;

namespace SmoaServe.Training.Tests;

public sealed class ChatDatasetTests
{
    private static readonly ITextTokenizer Tokenizer = TokenizerLoader.Load(LlamaA);
    private static readonly IChatTemplate Template = ChatTemplateLoader.Load(LlamaA)!;

    private static ChatDataset Dataset(int maxLength = 2048, bool truncate = false) =>
        new(Tokenizer, Template, new ChatDataOptions { MaxSequenceLength = maxLength, Truncate = truncate });

    /// <summary>The fixture's multi-turn chat (HF apply_chat_template reference) followed by an assistant answer.</summary>
    private static (string Line, int[] PromptIds) ReferenceConversation(int? firstWeight = null)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(LlamaA, "expected_tokens.json")));
        var messages = doc.RootElement.GetProperty("chat_messages").EnumerateArray()
            .Select(m => new Dictionary<string, object> { ["role"] = m.GetProperty("role").GetString()!, ["content"] = m.GetProperty("content").GetString()! })
            .ToList();
        if (firstWeight is { } w) messages[2]["weight"] = w;
        messages.Add(new Dictionary<string, object> { ["role"] = "assistant", ["content"] = "6" });
        var promptIds = doc.RootElement.GetProperty("chat_prompt_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        return (JsonSerializer.Serialize(new { messages }), promptIds);
    }

    private static int[] Encode(string text) => Tokenizer.Encode(text, addSpecialTokens: false).ToArray();

    [Fact]
    public void Prompt_tokens_are_the_reference_prompt_and_only_assistant_tokens_are_trained()
    {
        var (line, promptIds) = ReferenceConversation();
        var e = Dataset().Tokenize(line, "test")!;

        // what precedes the last answer is exactly HF's apply_chat_template(..., add_generation_prompt=True)
        Assert.Equal(promptIds, e.Ids[..promptIds.Length]);
        var answer = Encode("6<|eot_id|>");
        Assert.Equal(answer, e.Ids[promptIds.Length..]);

        // trained: the first answer "4<|eot_id|>" inside the prompt, and the last answer; nothing else
        var firstAnswer = Encode("4<|eot_id|>");
        string rendered = Template.Render([new ChatMessage("system", "You are terse."), new ChatMessage("user", "What is 2+2?")], addGenerationPrompt: true);
        int firstStart = Encode(rendered).Length;
        var expected = new bool[e.Ids.Length];
        for (int i = 0; i < firstAnswer.Length; i++) expected[firstStart + i] = true;
        for (int i = promptIds.Length; i < e.Ids.Length; i++) expected[i] = true;
        Assert.Equal(firstAnswer, e.Ids[firstStart..(firstStart + firstAnswer.Length)]);
        Assert.Equal(expected, e.Trained);
    }

    [Fact]
    public void Weight_zero_assistant_messages_are_not_trained()
    {
        var (line, promptIds) = ReferenceConversation(firstWeight: 0);
        var e = Dataset().Tokenize(line, "test")!;
        Assert.Equal(promptIds, e.Ids[..promptIds.Length]);
        Assert.All(e.Trained[..promptIds.Length], t => Assert.False(t));
        Assert.All(e.Trained[promptIds.Length..], t => Assert.True(t));
    }

    [Fact]
    public void Content_parts_are_the_same_as_a_string()
    {
        var asString = Dataset().Tokenize("""{"messages": [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi"}]}""", "a")!;
        var asParts = Dataset().Tokenize("""{"messages": [{"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}]}, {"role": "assistant", "content": "hi"}]}""", "b")!;
        Assert.Equal(asString.Ids, asParts.Ids);
        Assert.Equal(asString.Trained, asParts.Trained);
    }

    [Theory]
    [InlineData("""{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 2}]}""", "weight")]
    [InlineData("""{"messages": [{"role": "user", "content": "a", "weight": 1}, {"role": "assistant", "content": "b"}]}""", "only allowed on assistant")]
    [InlineData("""{"messages": [{"role": "user", "content": "a"}]}""", "no assistant message")]
    [InlineData("""{"messages": []}""", "messages")]
    [InlineData("""{"prompt": "a"}""", "messages")]
    [InlineData("""{"messages": [{"content": "a"}]}""", "role")]
    [InlineData("""{"messages": [{"role": "user", "content": 5}]}""", "content")]
    [InlineData("""not json""", "not valid JSON")]
    public void Bad_lines_are_errors_that_say_why(string line, string reason)
    {
        var e = Assert.Throws<InvalidDataException>(() => Dataset().Tokenize(line, "data.jsonl:7"));
        Assert.Contains("data.jsonl:7", e.Message);
        Assert.Contains(reason, e.Message);
    }

    [Fact]
    public void A_file_names_the_line_of_a_problem_and_skips_blank_lines()
    {
        string path = Path.Combine(TempDir(), "data.jsonl");
        File.WriteAllText(path, EndToEndTests.Line(1) + "\n\n" + "{\"messages\": 3}\n");
        var e = Assert.Throws<InvalidDataException>(() => Dataset().Load(path));
        Assert.Contains("data.jsonl:3", e.Message);
    }

    [Fact]
    public void Too_long_conversations_fail_by_default_and_are_truncated_with_a_warning_on_request()
    {
        string path = Path.Combine(TempDir(), "data.jsonl");
        string longAnswer = string.Join(" ", Enumerable.Repeat("seven", 40));
        File.WriteAllText(path, EndToEndTests.Line(2) + "\n" +
            $"{{\"messages\": [{{\"role\": \"user\", \"content\": \"code 7\"}}, {{\"role\": \"assistant\", \"content\": \"{longAnswer}\"}}]}}\n");
        int shortLength = Dataset().Tokenize(EndToEndTests.Line(2), "x")!.Ids.Length;
        int limit = shortLength + 10;

        var error = Assert.Throws<InvalidDataException>(() => Dataset(limit).Load(path));
        Assert.Contains("data.jsonl:2", error.Message);
        Assert.Contains($"limit of {limit}", error.Message);

        var warnings = new List<string>();
        var examples = Dataset(limit, truncate: true).Load(path, warnings.Add);
        Assert.Equal(2, examples.Count);
        Assert.Equal(limit, examples[1].Ids.Length);
        Assert.Equal(shortLength, examples[0].Ids.Length);
        var warning = Assert.Single(warnings);
        Assert.Contains("data.jsonl:2", warning);
        Assert.Contains("truncated", warning);
    }

    [Fact]
    public void Lines_with_nothing_to_train_are_skipped_with_a_warning()
    {
        string path = Path.Combine(TempDir(), "data.jsonl");
        File.WriteAllText(path, EndToEndTests.Line(3) + "\n" +
            """{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 0}]}""" + "\n");
        var warnings = new List<string>();
        var examples = Dataset().Load(path, warnings.Add);
        Assert.Single(examples);
        Assert.Contains("data.jsonl:2", Assert.Single(warnings));

        File.WriteAllText(path, """{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 0}]}""" + "\n");
        Assert.Throws<InvalidDataException>(() => Dataset().Load(path));
    }

    [Fact]
    public void Epoch_order_is_a_shuffle_fixed_by_seed_and_epoch_and_packing_never_splits_an_example()
    {
        var examples = Enumerable.Range(0, 16).Select(i => Dataset().Tokenize(EndToEndTests.Line(i), $"{i}", i + 1)!).ToList();
        var data = new TrainingData(examples, 64);
        var order0 = data.EpochRows(0, 5).Select(r => r[0].Line).ToList();
        Assert.Equal(order0, data.EpochRows(0, 5).Select(r => r[0].Line).ToList());
        Assert.NotEqual(order0, data.EpochRows(1, 5).Select(r => r[0].Line).ToList());
        Assert.NotEqual(order0, data.EpochRows(0, 6).Select(r => r[0].Line).ToList());
        Assert.Equal(Enumerable.Range(1, 16), order0.Order());

        var packed = new TrainingData(examples, 64, packing: true).EpochRows(0, 5);
        Assert.True(packed.Count < 16);
        Assert.All(packed, row => Assert.True(row.Sum(e => e.Ids.Length) <= 64));
        Assert.Equal(Enumerable.Range(1, 16), packed.SelectMany(r => r).Select(e => e.Line).Order());
    }
}
