#!/usr/bin/env bash
# Prepares this machine (Debian 12, x86-64) to build copydata for Windows and
# run the Windows tests under Wine: the Rust target, mingw, Wine, and two
# fixes to the Wine prefix. Safe to run again; it skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx x86_64-pc-windows-gnu; then
    rustup target add x86_64-pc-windows-gnu
fi

need=()
command -v x86_64-w64-mingw32-gcc >/dev/null || need+=(gcc-mingw-w64-x86-64)
command -v wine >/dev/null || need+=(wine64)
if ((${#need[@]})); then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

export WINEDEBUG=-all
prefix="${WINEPREFIX:-$HOME/.wine}"
if [ ! -f "$prefix/system.reg" ]; then
    echo "setup-windows: creating the Wine prefix $prefix (takes a while the first time)"
    wineboot --init >/dev/null 2>&1 || true
    wineserver -w || true
fi

# Rust programs import ProcessPrng from bcryptprimitives.dll, which Wine 8.0
# lacks: install a small forwarding DLL.
shim="$prefix/drive_c/windows/system32/bcryptprimitives.dll"
if [ ! -f "$shim" ]; then
    x86_64-w64-mingw32-gcc -shared -O2 -o "$shim" scripts/wine/bcryptprimitives.c -ladvapi32
fi

# Windows (message-only ones included) need a graphics driver; with no
# display, use Wine's null driver.
if ! grep -q '"Graphics"="null"' "$prefix/user.reg" 2>/dev/null; then
    wine reg add 'HKCU\Software\Wine\Drivers' /v Graphics /d null /f >/dev/null 2>&1
    wineserver -w || true
fi
echo "setup-windows: ready (Rust target, mingw, Wine prefix $prefix)"
