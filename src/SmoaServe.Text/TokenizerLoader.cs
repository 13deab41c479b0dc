using SmoaServe.Text.Tokenizers;

namespace SmoaServe.Text;

/// <summary>Loads a checkpoint's tokenizer: tokenizer.json (HF byte-level or SentencePiece-style BPE) preferred, else tokenizer.model.</summary>
public static class TokenizerLoader
{
    public static ITextTokenizer Load(string modelDir)
    {
        if (!Directory.Exists(modelDir)) throw new DirectoryNotFoundException($"model directory not found: {modelDir}");
        var config = TokenizerConfig.Load(modelDir);
        var json = Path.Combine(modelDir, "tokenizer.json");
        if (File.Exists(json)) return HfJsonTokenizer.Load(json, config);
        var sp = Path.Combine(modelDir, "tokenizer.model");
        if (File.Exists(sp)) return SentencePieceTokenizer.Load(sp, config);
        throw new FileNotFoundException($"no tokenizer in {modelDir}: expected tokenizer.json or tokenizer.model", json);
    }
}
