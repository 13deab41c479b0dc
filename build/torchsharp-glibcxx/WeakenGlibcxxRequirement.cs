// MSBuild task (compiled by RoslynCodeTaskFactory at build time; no native tools needed).
//
// TorchSharp 0.107's libLibTorchSharp.so was linked against GCC 13's libstdc++, whose <iostream> header makes every
// object that includes it reference `std::ios_base_library_init()` (version GLIBCXX_3.4.32). The reference only
// pins the library version: nothing relocates or calls it. Older libstdc++ (Debian 12 has GLIBCXX_3.4.30) lack that
// version, so the dynamic loader refuses the library. Marking the version requirement weak (VER_FLG_WEAK) and the
// undefined symbol weak (STB_WEAK) lets it load everywhere; on a newer libstdc++ nothing changes. The edit rewrites
// two flag bytes in place (same size, idempotent) and goes through a temporary file and a rename.
using System;
using System.IO;
using System.Text;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

public sealed class WeakenGlibcxxRequirement : Task
{
    [Required] public string[] Libraries { get; set; } = Array.Empty<string>();
    public string Version { get; set; } = "GLIBCXX_3.4.32";
    public string Symbol { get; set; } = "_ZSt21ios_base_library_initv";

    const uint ShtDynsym = 11, ShtGnuVerneed = 0x6ffffffe;
    const ushort VerFlgWeak = 0x2;
    const byte StbWeak = 2;

    public override bool Execute()
    {
        foreach (var lib in Libraries)
        {
            if (!File.Exists(lib)) continue;
            try
            {
                var bytes = File.ReadAllBytes(lib);
                int changed = Patch(bytes, Version, Symbol);
                if (changed == 0) continue;
                var tmp = lib + ".patching." + Guid.NewGuid().ToString("N");
                File.WriteAllBytes(tmp, bytes);
                File.Replace(tmp, lib, null);
                Log.LogMessage(MessageImportance.Normal, $"weakened the {Version} requirement of {lib}");
            }
            catch (Exception e) when (e is InvalidDataException or IOException)
            {
                Log.LogError($"cannot patch {lib}: {e.Message}");
                return false;
            }
        }
        return !Log.HasLoggedErrors;
    }

    /// <summary>Returns the number of flag fields changed (0 when already patched or the library does not need it).</summary>
    public static int Patch(byte[] b, string version, string symbol)
    {
        if (b.Length < 64 || b[0] != 0x7f || b[1] != (byte)'E' || b[2] != (byte)'L' || b[3] != (byte)'F')
            throw new InvalidDataException("not an ELF file");
        if (b[4] != 2 || b[5] != 1) throw new InvalidDataException("not a little-endian ELF64 file");
        long shoff = I64(b, 0x28);
        int shentsize = U16(b, 0x3a), shnum = U16(b, 0x3c);
        if (shentsize != 64 || shoff <= 0 || shoff + (long)shnum * 64 > b.Length) throw new InvalidDataException("bad section table");
        int changed = 0;
        for (int i = 0; i < shnum; i++)
        {
            long sh = shoff + i * 64L;
            uint type = U32(b, sh + 4);
            if (type != ShtGnuVerneed && type != ShtDynsym) continue;
            long off = I64(b, sh + 0x18), size = I64(b, sh + 0x20);
            uint link = U32(b, sh + 0x28);
            if (off < 0 || size < 0 || off + size > b.Length || link >= shnum) throw new InvalidDataException("bad section bounds");
            long strOff = I64(b, shoff + link * 64L + 0x18), strSize = I64(b, shoff + link * 64L + 0x20);
            if (strOff < 0 || strSize < 0 || strOff + strSize > b.Length) throw new InvalidDataException("bad string table");
            if (type == ShtGnuVerneed) changed += WeakenVersion(b, off, off + size, strOff, strSize, version);
            else changed += WeakenUndefinedSymbol(b, off, size, strOff, strSize, symbol);
        }
        return changed;
    }

    static int WeakenVersion(byte[] b, long start, long end, long strOff, long strSize, string version)
    {
        int changed = 0;
        long vn = start;
        for (int guard = 0; guard < 4096 && vn + 16 <= end; guard++)
        {
            int count = U16(b, vn + 2);
            long aux = vn + U32(b, vn + 8);
            for (int j = 0; j < count && aux + 16 <= end; j++)
            {
                if (Name(b, strOff, strSize, U32(b, aux + 8)) == version && (U16(b, aux + 4) & VerFlgWeak) == 0)
                {
                    W16(b, aux + 4, (ushort)(U16(b, aux + 4) | VerFlgWeak));
                    changed++;
                }
                uint next = U32(b, aux + 12);
                if (next == 0) break;
                aux += next;
            }
            uint vnNext = U32(b, vn + 12);
            if (vnNext == 0) break;
            vn += vnNext;
        }
        return changed;
    }

    static int WeakenUndefinedSymbol(byte[] b, long off, long size, long strOff, long strSize, string symbol)
    {
        int changed = 0;
        for (long s = off; s + 24 <= off + size; s += 24)
        {
            if (U16(b, s + 6) != 0) continue; // defined symbols keep their binding
            if (Name(b, strOff, strSize, U32(b, s)) != symbol) continue;
            byte info = b[s + 4];
            if (info >> 4 == StbWeak) continue;
            b[s + 4] = (byte)((StbWeak << 4) | (info & 0xf));
            changed++;
        }
        return changed;
    }

    static string Name(byte[] b, long strOff, long strSize, uint index)
    {
        if (index >= strSize) return "";
        long start = strOff + index, end = start;
        while (end < strOff + strSize && b[end] != 0) end++;
        return Encoding.ASCII.GetString(b, (int)start, (int)(end - start));
    }

    static ushort U16(byte[] b, long o) => (ushort)(b[o] | b[o + 1] << 8);
    static uint U32(byte[] b, long o) => (uint)(b[o] | b[o + 1] << 8 | b[o + 2] << 16 | b[o + 3] << 24);
    static long I64(byte[] b, long o) => (long)(U32(b, o) | (ulong)U32(b, o + 4) << 32);
    static void W16(byte[] b, long o, ushort v) { b[o] = (byte)v; b[o + 1] = (byte)(v >> 8); }
}
