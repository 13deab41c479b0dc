#!/usr/bin/env bash
# Makes TorchSharp 0.107's libLibTorchSharp.so load on systems whose libstdc++ predates GLIBCXX_3.4.32
# (Debian 12: 3.4.30). Only std::ios_base_library_init() needs that version, so: mark the requirement weak,
# clear the symbol's version, and provide the symbol from a tiny shim library added as DT_NEEDED.
# Usage: patch.sh DIR   (DIR holds libLibTorchSharp.so). A no-op where libstdc++ is new enough or DIR is patched.
set -euo pipefail
dir=$1
lib="$dir/libLibTorchSharp.so"
shim_name=libsmoa_glibcxx_shim.so
[ -f "$lib" ] || exit 0
here=$(cd "$(dirname "$0")" && pwd)
system_libstdcxx=$( (ldconfig -p 2>/dev/null | awk '/libstdc\+\+\.so\.6 .*x86-64/ {print $NF; exit}') || true)
[ -n "$system_libstdcxx" ] || system_libstdcxx=$(g++ -print-file-name=libstdc++.so.6 2>/dev/null || true)
if [ -n "$system_libstdcxx" ] && grep -q 'GLIBCXX_3\.4\.32' "$system_libstdcxx"; then exit 0; fi
if readelf -d "$lib" | grep -q "$shim_name"; then exit 0; fi
for tool in g++ gcc patchelf readelf; do
  command -v $tool >/dev/null || { echo "error: $tool is needed to patch $lib for this libstdc++ (apt-get install -y g++ patchelf)" >&2; exit 1; }
done
cache="$here/.cache"; mkdir -p "$cache"
# parallel builds patch several output folders at once: build each helper under a private name, then rename (atomic)
if [ ! -x "$cache/weaken-verneed" ]; then
  gcc -O2 -o "$cache/weaken-verneed.$$" "$here/weaken-verneed.c" && mv -f "$cache/weaken-verneed.$$" "$cache/weaken-verneed"
fi
if [ ! -f "$cache/$shim_name" ]; then
  g++ -shared -fPIC -O2 -o "$cache/$shim_name.$$" "$here/shim.cpp" && mv -f "$cache/$shim_name.$$" "$cache/$shim_name"
fi
tmp="$lib.patching.$$"
cp "$lib" "$tmp"
"$cache/weaken-verneed" "$tmp" GLIBCXX_3.4.32
patchelf --clear-symbol-version _ZSt21ios_base_library_initv "$tmp"
patchelf --add-needed "$shim_name" "$tmp"
cp "$cache/$shim_name" "$dir/$shim_name"
mv "$tmp" "$lib"
echo "patched $lib for libstdc++ without GLIBCXX_3.4.32"
