using System.Text.Json;
using SmoaServe.Text.Tokenizers;

namespace SmoaServe.Text;

/// <summary>
/// Loads a checkpoint's chat template: chat_template.jinja, else tokenizer_config.json "chat_template" (a string, or
/// a list of {name, template} from which "default" is taken), else chat_template.json; null when there is none.
/// The template is parsed here, so an unsupported construct fails at load.
/// </summary>
public static class ChatTemplateLoader
{
    public static IChatTemplate? Load(string modelDir)
    {
        var config = TokenizerConfig.Load(modelDir);
        var (source, origin) = FindSource(modelDir, config);
        if (source is null) return null;
        var specials = new Dictionary<string, string?>
        {
            ["bos_token"] = config.BosToken, ["eos_token"] = config.EosToken,
            ["unk_token"] = config.UnkToken, ["pad_token"] = config.PadToken,
        };
        try { return new ChatTemplate(source, specials); }
        catch (ChatTemplateException e) { throw new ChatTemplateException($"{origin}: {e.Message}", e); }
    }

    static (string? Source, string Origin) FindSource(string modelDir, TokenizerConfig config)
    {
        var jinja = Path.Combine(modelDir, "chat_template.jinja");
        if (File.Exists(jinja)) return (File.ReadAllText(jinja), jinja);
        var cfgPath = Path.Combine(modelDir, "tokenizer_config.json");
        if (config.ChatTemplate is { } t) return (FromJson(t, cfgPath), cfgPath);
        var json = Path.Combine(modelDir, "chat_template.json");
        if (File.Exists(json))
        {
            try
            {
                using var doc = JsonDocument.Parse(File.ReadAllBytes(json));
                if (doc.RootElement.TryGetProperty("chat_template", out var ct)) return (FromJson(ct, json), json);
            }
            catch (JsonException e) { throw new ChatTemplateException($"{json}: not valid JSON ({e.Message})", e); }
        }
        return (null, "");
    }

    static string FromJson(JsonElement t, string path)
    {
        if (t.ValueKind == JsonValueKind.String) return t.GetString()!;
        if (t.ValueKind == JsonValueKind.Array)
        {
            foreach (var item in t.EnumerateArray())
                if (item.ValueKind == JsonValueKind.Object && item.TryGetProperty("name", out var n) && n.GetString() == "default"
                    && item.TryGetProperty("template", out var tpl) && tpl.ValueKind == JsonValueKind.String)
                    return tpl.GetString()!;
            throw new ChatTemplateException($"{path}: 'chat_template' is a list without a template named \"default\"");
        }
        throw new ChatTemplateException($"{path}: 'chat_template' must be a string or a list of {{name, template}}");
    }
}
