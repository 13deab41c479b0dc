using SmoaServe.Text;

namespace SmoaServe.Server;

internal static class ChatTemplates
{
    /// <summary>The checkpoint's chat template, or null (then /v1/chat/completions answers 400).</summary>
    public static IChatTemplate? Load(string modelDir) => ChatTemplateLoader.Load(modelDir);
}
