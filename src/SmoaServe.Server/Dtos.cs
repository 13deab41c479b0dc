namespace SmoaServe.Server;

// Response shapes of the OpenAI / vLLM API (serialized snake_case, nulls omitted; see Json.Options).

public sealed record ModelCard(string Id, long Created, string OwnedBy, string Root, string? Parent, int MaxModelLen)
{
    public string Object => "model";
}

public sealed record ModelList(IReadOnlyList<ModelCard> Data)
{
    public string Object => "list";
}

public sealed record Usage(int PromptTokens, int CompletionTokens)
{
    public int TotalTokens => PromptTokens + CompletionTokens;
}

public sealed record AssistantMessage(string Content)
{
    public string Role => "assistant";
}

public sealed record ChatChoice(int Index, AssistantMessage Message, string FinishReason);

public sealed record ChatCompletionResponse(string Id, long Created, string Model, IReadOnlyList<ChatChoice> Choices, Usage Usage)
{
    public string Object => "chat.completion";
}

public sealed record ChatDelta(string? Role, string? Content);

public sealed record ChatChunkChoice(int Index, ChatDelta Delta, string? FinishReason);

public sealed record ChatCompletionChunk(string Id, long Created, string Model, IReadOnlyList<ChatChunkChoice> Choices, Usage? Usage)
{
    public string Object => "chat.completion.chunk";
}

public sealed record CompletionChoice(int Index, string Text, string? FinishReason);

public sealed record CompletionResponse(string Id, long Created, string Model, IReadOnlyList<CompletionChoice> Choices, Usage? Usage)
{
    public string Object => "text_completion";
}

public sealed record TokenizeResponse(int Count, int MaxModelLen, IReadOnlyList<int> Tokens);

public sealed record DetokenizeResponse(string Prompt);

// Request shapes, for the OpenAPI document only: bodies are parsed by RequestParser, which reports the offending field.

public sealed record ChatMessageDoc(string Role, string Content);
public sealed record StreamOptionsDoc(bool? IncludeUsage);

public sealed record ChatCompletionRequestDoc(
    string Model, IReadOnlyList<ChatMessageDoc> Messages, int? MaxTokens, int? MaxCompletionTokens, double? Temperature,
    double? TopP, long? Seed, IReadOnlyList<string>? Stop, int? N, bool? Stream, StreamOptionsDoc? StreamOptions);

public sealed record CompletionRequestDoc(
    string Model, string Prompt, int? MaxTokens, double? Temperature, double? TopP, long? Seed, IReadOnlyList<string>? Stop,
    int? N, bool? Stream, StreamOptionsDoc? StreamOptions);

public sealed record TokenizeRequestDoc(string? Model, string? Prompt, IReadOnlyList<ChatMessageDoc>? Messages, bool? AddGenerationPrompt, bool? AddSpecialTokens);

public sealed record DetokenizeRequestDoc(string? Model, IReadOnlyList<int> Tokens);
