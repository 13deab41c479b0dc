using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace SmoaServe.Engine.Checkpoints;

/// <summary>
/// Opens files from folders whose contents are untrusted (adapter folders): only regular files, only inside the folder
/// (a symbolic link is followed only when its final target is a regular file in the folder), at most a given size,
/// checked before a byte is read, and never blocking: a FIFO, a socket or a device under an expected name is refused
/// without being opened, and on Linux the open itself cannot block (O_NONBLOCK) and is checked again on the handle
/// (same file as inspected, still regular), so swapping the file between the check and the open does not help.
/// Error messages name the file, never its contents.
/// </summary>
public static class SafeFile
{
    /// <summary>Opens <paramref name="name"/> in <paramref name="folder"/> for reading (sequential or mapped).</summary>
    /// <exception cref="FileNotFoundException">no such entry</exception>
    /// <exception cref="InvalidDataException">not a regular file inside the folder, or larger than <paramref name="maxBytes"/></exception>
    public static FileStream OpenRegular(string folder, string name, long maxBytes)
    {
        string path = Path.Combine(folder, name);
        var target = Inspect(folder, path, maxBytes);
        var stream = Open(target.Path, path);
        try
        {
            if (Unix.TryStat(stream.SafeFileHandle, out var opened))
            {
                if (!opened.IsRegular) throw new InvalidDataException($"{path}: not a regular file");
                if (opened.Dev != target.Dev || opened.Ino != target.Ino) throw new InvalidDataException($"{path}: changed while it was being opened");
                if (opened.Size > maxBytes) throw TooLarge(path, opened.Size, maxBytes);
            }
            else if (stream.Length > maxBytes) throw TooLarge(path, stream.Length, maxBytes);
            return stream;
        }
        catch
        {
            stream.Dispose();
            throw;
        }
    }

    /// <summary>The whole of a small file (a config), with the same checks as <see cref="OpenRegular"/>.</summary>
    public static byte[] ReadAllBytes(string folder, string name, long maxBytes)
    {
        using var stream = OpenRegular(folder, name, maxBytes);
        long length = stream.Length;
        var bytes = new byte[length];
        stream.ReadExactly(bytes);
        return bytes;
    }

    /// <summary>Whether <paramref name="path"/> exists as any kind of entry (a dangling link counts).</summary>
    public static bool Exists(string path) => Unix.TryLStat(path, out _) || File.Exists(path) || Directory.Exists(path);

    private readonly record struct Target(string Path, long Dev, long Ino);

    private static Target Inspect(string folder, string path, long maxBytes)
    {
        if (!Unix.Available)
        {
            var info = new FileInfo(path);
            if (!info.Exists) throw new FileNotFoundException($"{path} is missing", path);
            if (info.LinkTarget is not null) throw new InvalidDataException($"{path}: a link (only regular files are read from an adapter folder)");
            if (info.Length > maxBytes) throw TooLarge(path, info.Length, maxBytes);
            return new Target(path, 0, 0);
        }
        if (!Unix.TryLStat(path, out var entry)) throw new FileNotFoundException($"{path} is missing", path);
        string real = path;
        if (entry.IsLink)
        {
            // followed only to a regular file inside the folder (both sides with every link resolved)
            real = Unix.RealPath(path) ?? throw new InvalidDataException($"{path}: a link that does not resolve");
            string root = Unix.RealPath(folder) ?? throw new DirectoryNotFoundException($"{folder} is not a readable folder");
            if (!real.StartsWith(root.TrimEnd('/') + "/", StringComparison.Ordinal))
                throw new InvalidDataException($"{path}: a link to a file outside the adapter folder");
            if (!Unix.TryLStat(real, out entry)) throw new FileNotFoundException($"{path}: its link target is missing", path);
        }
        if (!entry.IsRegular)
            throw new InvalidDataException($"{path}: not a regular file ({entry.Kind}); only regular files are read from an adapter folder");
        if (entry.Size > maxBytes) throw TooLarge(path, entry.Size, maxBytes);
        return new Target(real, entry.Dev, entry.Ino);
    }

    private static FileStream Open(string realPath, string shownPath)
    {
        if (Unix.TryOpenNonBlocking(realPath) is { } handle)
            return new FileStream(handle, FileAccess.Read, bufferSize: 0);
        return new FileStream(realPath, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 0);
    }

    private static InvalidDataException TooLarge(string path, long size, long max) =>
        new($"{path}: {size} bytes, more than the {max} allowed");

    /// <summary>stat(2) and friends through the runtime's own native shim (System.Native), and open(2) from libc.</summary>
    private static unsafe class Unix
    {
        private const string SystemNative = "libSystem.Native";
        private const int S_IFMT = 0xF000, S_IFREG = 0x8000, S_IFDIR = 0x4000, S_IFLNK = 0xA000, S_IFIFO = 0x1000, S_IFSOCK = 0xC000, S_IFCHR = 0x2000, S_IFBLK = 0x6000;

        public static readonly bool Available = !OperatingSystem.IsWindows() && Probe();

        /// <summary>The fields of System.Native's FileStatus this code reads (the struct is padded generously below).</summary>
        public readonly record struct Status(int Mode, long Size, long Dev, long Ino)
        {
            public bool IsRegular => (Mode & S_IFMT) == S_IFREG;
            public bool IsLink => (Mode & S_IFMT) == S_IFLNK;
            public string Kind => (Mode & S_IFMT) switch
            {
                S_IFDIR => "a directory", S_IFLNK => "a link", S_IFIFO => "a FIFO", S_IFSOCK => "a socket",
                S_IFCHR => "a character device", S_IFBLK => "a block device", S_IFREG => "a regular file", _ => "an unknown kind of file",
            };
        }

        // System.Native's FileStatus: int32 Flags, Mode, uint32 Uid, Gid, then int64 Size, ATime, ATimeNsec, MTime, MTimeNsec,
        // CTime, CTimeNsec, BirthTime, BirthTimeNsec, Dev, RDev, Ino, uint32 UserFlags.
        [StructLayout(LayoutKind.Sequential)]
        private struct FileStatus
        {
            public int Flags, Mode;
            public uint Uid, Gid;
            public long Size, ATime, ATimeNsec, MTime, MTimeNsec, CTime, CTimeNsec, BirthTime, BirthTimeNsec, Dev, RDev, Ino;
            public uint UserFlags;
            private fixed byte _reserve[128];
        }

        [DllImport(SystemNative, EntryPoint = "SystemNative_LStat", SetLastError = true)]
        private static extern int LStat([MarshalAs(UnmanagedType.LPUTF8Str)] string path, out FileStatus output);

        [DllImport(SystemNative, EntryPoint = "SystemNative_FStat", SetLastError = true)]
        private static extern int FStat(SafeHandle fd, out FileStatus output);

        [DllImport(SystemNative, EntryPoint = "SystemNative_RealPath", SetLastError = true)]
        private static extern IntPtr RealPathNative([MarshalAs(UnmanagedType.LPUTF8Str)] string path);

        private static bool Probe()
        {
            try { return LStat("/", out var s) == 0 && (s.Mode & S_IFMT) == S_IFDIR; }
            catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return false; }
        }

        public static bool TryLStat(string path, out Status status)
        {
            status = default;
            if (!Available || LStat(path, out var s) != 0) return false;
            status = new Status(s.Mode, s.Size, s.Dev, s.Ino);
            return true;
        }

        public static bool TryStat(SafeHandle handle, out Status status)
        {
            status = default;
            if (!Available || FStat(handle, out var s) != 0) return false;
            status = new Status(s.Mode, s.Size, s.Dev, s.Ino);
            return true;
        }

        /// <summary>The path with every link resolved, or null.</summary>
        public static string? RealPath(string path)
        {
            IntPtr p = RealPathNative(path);
            if (p == IntPtr.Zero) return null;
            try { return Marshal.PtrToStringUTF8(p); }
            finally { NativeMemory.Free((void*)p); }
        }

        // open(2) with O_RDONLY | O_NONBLOCK | O_CLOEXEC (Linux values, the same on x86-64 and arm64): a FIFO or device
        // swapped in after the check opens without waiting for a writer, and the handle check then refuses it.
        private const int O_RDONLY = 0, O_NONBLOCK = 0x800, O_CLOEXEC = 0x80000;
        private static readonly delegate* unmanaged<byte*, int, int> OpenFn = FindOpen();

        private static delegate* unmanaged<byte*, int, int> FindOpen()
        {
            if (!OperatingSystem.IsLinux()) return null;
            foreach (var name in new[] { "libc.so.6", "libc" })
                if (NativeLibrary.TryLoad(name, out var lib) && NativeLibrary.TryGetExport(lib, "open", out var fn))
                    return (delegate* unmanaged<byte*, int, int>)fn;
            return null;
        }

        public static SafeFileHandle? TryOpenNonBlocking(string path)
        {
            if (OpenFn == null) return null;
            var bytes = System.Text.Encoding.UTF8.GetBytes(path + "\0");
            int fd;
            fixed (byte* p = bytes) fd = OpenFn(p, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
            if (fd < 0)
            {
                int errno = Marshal.GetLastSystemError();
                throw new IOException($"{path} cannot be opened (errno {errno})");
            }
            return new SafeFileHandle(fd, ownsHandle: true);
        }
    }
}
