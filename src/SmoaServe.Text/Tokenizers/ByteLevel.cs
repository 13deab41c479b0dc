using System.Text;

namespace SmoaServe.Text.Tokenizers;

/// <summary>GPT-2's reversible byte ↔ printable-character map used by byte-level BPE.</summary>
internal static class ByteLevel
{
    public static readonly char[] CharByByte = BuildCharByByte();
    public static readonly Dictionary<char, byte> ByteByChar = BuildByteByChar();

    /// <summary>GPT-2 regex used by the ByteLevel pre-tokenizer when use_regex is true.</summary>
    public const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    static char[] BuildCharByByte()
    {
        var map = new char[256];
        var next = 256;
        for (var b = 0; b < 256; b++)
        {
            var printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            map[b] = printable ? (char)b : (char)next++;
        }
        return map;
    }

    static Dictionary<char, byte> BuildByteByChar()
    {
        var d = new Dictionary<char, byte>(256);
        for (var b = 0; b < 256; b++) d[CharByByte[b]] = (byte)b;
        return d;
    }

    /// <summary>UTF-8 bytes of <paramref name="s"/> written as byte-level characters.</summary>
    public static string Encode(string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        var chars = new char[bytes.Length];
        for (var i = 0; i < bytes.Length; i++) chars[i] = CharByByte[bytes[i]];
        return new string(chars);
    }

    /// <summary>The bytes a byte-level token stands for; a token with a character outside the map is taken as raw UTF-8 (as HF does).</summary>
    public static byte[] Decode(string token)
    {
        var bytes = new byte[token.Length];
        for (var i = 0; i < token.Length; i++)
        {
            if (!ByteByChar.TryGetValue(token[i], out var b)) return Encoding.UTF8.GetBytes(token);
            bytes[i] = b;
        }
        return bytes;
    }
}
