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

public sealed record AssistantMessage(string? Content, IReadOnlyList<ToolCallDto>? ToolCalls = null)
{
    public string Role => "assistant";
}

public sealed record FunctionCallDto(string? Name, string? Arguments);

public sealed record ToolCallDto(string Id, FunctionCallDto Function)
{
    public string Type => "function";
}

/// <summary>A streamed tool call: the whole call (id, name, arguments) in one delta at its index.</summary>
public sealed record ToolCallDeltaDto(int Index, string? Id, string? Type, FunctionCallDto Function);

/// <summary>Chat logprobs of one token: its text, log-probability, UTF-8 bytes and the most likely alternatives.</summary>
public sealed record ChatTokenLogprob(string Token, double Logprob, IReadOnlyList<int> Bytes, IReadOnlyList<ChatTopLogprob> TopLogprobs);

public sealed record ChatTopLogprob(string Token, double Logprob, IReadOnlyList<int> Bytes);

public sealed record ChatLogprobs(IReadOnlyList<ChatTokenLogprob> Content);

/// <summary>Legacy completions logprobs: per token its text, log-probability, alternatives and offset in the choice's text.</summary>
public sealed record CompletionLogprobs(IReadOnlyList<string> Tokens, IReadOnlyList<double?> TokenLogprobs,
    IReadOnlyList<IReadOnlyDictionary<string, double>?> TopLogprobs, IReadOnlyList<int> TextOffset);

public sealed record ChatChoice(int Index, AssistantMessage Message, string FinishReason, ChatLogprobs? Logprobs = null);

public sealed record ChatCompletionResponse(string Id, long Created, string Model, IReadOnlyList<ChatChoice> Choices, Usage Usage)
{
    public string Object => "chat.completion";
}

public sealed record ChatDelta(string? Role, string? Content, IReadOnlyList<ToolCallDeltaDto>? ToolCalls = null);

public sealed record ChatChunkChoice(int Index, ChatDelta Delta, string? FinishReason, ChatLogprobs? Logprobs = null);

public sealed record ChatCompletionChunk(string Id, long Created, string Model, IReadOnlyList<ChatChunkChoice> Choices, Usage? Usage)
{
    public string Object => "chat.completion.chunk";
}

public sealed record CompletionChoice(int Index, string Text, string? FinishReason, CompletionLogprobs? Logprobs = null);

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
    double? TopP, long? Seed, IReadOnlyList<string>? Stop, int? N, bool? Stream, StreamOptionsDoc? StreamOptions,
    bool? Logprobs = null, int? TopLogprobs = null, double? PresencePenalty = null, double? FrequencyPenalty = null, double? RepetitionPenalty = null,
    IReadOnlyDictionary<string, double>? LogitBias = null, double? MinP = null, int? TopK = null, IReadOnlyList<int>? StopTokenIds = null,
    string? User = null, string? AdapterId = null, System.Text.Json.JsonElement? ResponseFormat = null, System.Text.Json.JsonElement? Tools = null,
    System.Text.Json.JsonElement? ToolChoice = null, bool? ParallelToolCalls = null, bool? IgnoreEos = null);

public sealed record CompletionRequestDoc(
    string Model, string Prompt, int? MaxTokens, double? Temperature, double? TopP, long? Seed, IReadOnlyList<string>? Stop,
    int? N, bool? Stream, StreamOptionsDoc? StreamOptions,
    int? Logprobs = null, bool? Echo = null, int? BestOf = null, double? PresencePenalty = null, double? FrequencyPenalty = null,
    double? RepetitionPenalty = null, IReadOnlyDictionary<string, double>? LogitBias = null, double? MinP = null, int? TopK = null,
    IReadOnlyList<int>? StopTokenIds = null, string? User = null, string? AdapterId = null, System.Text.Json.JsonElement? ResponseFormat = null,
    bool? IgnoreEos = null);

public sealed record TokenizeRequestDoc(string? Model, string? Prompt, IReadOnlyList<ChatMessageDoc>? Messages, bool? AddGenerationPrompt, bool? AddSpecialTokens);

public sealed record DetokenizeRequestDoc(string? Model, IReadOnlyList<int> Tokens);
