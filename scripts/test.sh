#!/usr/bin/env bash
# The whole test suite: Linux natively, then Windows under Wine, from the
# same test sources. Installs what the Windows half needs on first use
# (scripts/setup-windows.sh). Extra arguments go to both `cargo test` runs.
set -euo pipefail
cd "$(dirname "$0")/.."
# The optional features, so that their tests and examples run too.
features=(--features copydata/serde,copydata/tokio)

# One of copydata-ffi's C examples (crates/copydata-ffi/examples/c/NAME.c),
# linked against the static library built for TARGET ("" for the host) with
# the C compiler CC, written to OUT; tests/c_example.rs runs them.
build_c_example() {
    local target=$1 cc=$2 out=$3 name=${4:-echo} dir=target/debug log libs
    local args=(-p copydata-ffi --lib --locked -q)
    if [ -n "$target" ]; then args+=(--target "$target"); dir=target/$target/debug; fi
    # rustc says which system libraries the static library needs.
    log=$(cargo rustc "${args[@]}" -- --print native-static-libs 2>&1) || { echo "$log" >&2; return 1; }
    libs=$(sed -n 's/^note: native-static-libs: //p' <<<"$log" | tail -1)
    # instance.c reads its arguments from the wide command line on Windows
    # (CommandLineToArgvW).
    if [ -n "$target" ]; then libs+=" -lshell32"; fi
    mkdir -p target/c
    # shellcheck disable=SC2086 # one flag per word
    "$cc" -O2 -Wall -Wextra -std=c11 -Icrates/copydata-ffi/include -o "$out" \
        "crates/copydata-ffi/examples/c/$name.c" "$dir/libcopydata_ffi.a" $libs
}

# Sockets are named by a hash of the mailbox name: those made during the
# suite are told apart by their age.
started=$(mktemp)
trap 'rm -f "$started"' EXIT

echo "== Linux: cargo test --workspace"
build_c_example "" gcc target/c/copydata-ffi-echo
build_c_example "" gcc target/c/copydata-ffi-instance instance
build_c_example "" gcc target/c/copydata-ffi-inherit inherit
COPYDATA_FFI_C_EXAMPLE="$PWD/target/c/copydata-ffi-echo" COPYDATA_FFI_C_INSTANCE="$PWD/target/c/copydata-ffi-instance" \
    COPYDATA_FFI_C_INHERIT="$PWD/target/c/copydata-ffi-inherit" \
    COPYDATA_REQUIRE_EXAMPLES=1 cargo test --workspace --locked "${features[@]}" "$@"

# Before Linux 6.6, tmpfs keeps no extended attributes, where copydata
# marks its objects in /dev/shm: the named objects' tests run again on a
# /dev/shm that keeps none (a ramfs, in a mount namespace of their own),
# where that takes the unshare rights (root, say); skipped elsewhere.
# (Probed with the mount itself: unshare -m may be allowed where mounting is
# not, in a container say.)
if unshare -m sh -c 'mount -t ramfs -o mode=1777 none /dev/shm' 2>/dev/null; then
    echo "== Linux: named objects on a /dev/shm without extended attributes (as before Linux 6.6)"
    # (Built as above, so nothing is built again.)
    unshare -m bash -c 'mount -t ramfs -o mode=1777 none /dev/shm &&
        cargo test --workspace --locked --test sections --test sync --test instance "$@" &&
        left=$(ls -A /dev/shm) && { [ -z "$left" ] || { echo "left in /dev/shm: $left" >&2; exit 1; }; }' \
        _ "${features[@]}" "$@"
else
    echo "== (skipped: named objects without extended attributes; unshare -m is not allowed here)"
fi

echo "== Linux: the Python package (pytest)"
bash scripts/test-python.sh

echo "== Windows (x86_64-pc-windows-gnu under Wine): cargo test --workspace"
bash scripts/setup-windows.sh
# A plain Win32 program for the WM_COPYDATA interoperability tests.
mkdir -p target/c
x86_64-w64-mingw32-gcc -O2 -Wall -o target/c/copydata-peer.exe crates/copydata/tests/c/peer.c -luser32
build_c_example x86_64-pc-windows-gnu x86_64-w64-mingw32-gcc target/c/copydata-ffi-echo.exe
build_c_example x86_64-pc-windows-gnu x86_64-w64-mingw32-gcc target/c/copydata-ffi-instance.exe instance
build_c_example x86_64-pc-windows-gnu x86_64-w64-mingw32-gcc target/c/copydata-ffi-inherit.exe inherit
COPYDATA_C_PEER="$PWD/target/c/copydata-peer.exe" COPYDATA_FFI_C_EXAMPLE="$PWD/target/c/copydata-ffi-echo.exe" \
    COPYDATA_FFI_C_INSTANCE="$PWD/target/c/copydata-ffi-instance.exe" COPYDATA_FFI_C_INHERIT="$PWD/target/c/copydata-ffi-inherit.exe" \
    COPYDATA_REQUIRE_EXAMPLES=1 cargo test --workspace --locked --target x86_64-pc-windows-gnu "${features[@]}" "$@"
# Wine's server lingers a few seconds after the last program; end it now so
# no process outlives the suite.
wineserver -k 2>/dev/null || true

# Nothing may be left behind: no shared-memory objects, no mailbox files,
# no sockets.
runtime=${COPYDATA_RUNTIME_DIR:-${XDG_RUNTIME_DIR:+$XDG_RUNTIME_DIR/copydata}}
runtime=${runtime:-/tmp/copydata-$(id -u)}
left=$( {
    (ls /dev/shm; ls "$runtime") 2>/dev/null | grep -- 'copydata-\(clitest\|test\|demo\|example\)-'
    find "$runtime" -maxdepth 1 -name 'm-*.sock' -newer "$started" 2>/dev/null
} || true)
if [ -n "$left" ]; then
    echo "test.sh: the suite left objects behind (in /dev/shm or $runtime):" >&2
    echo "$left" >&2
    exit 1
fi
echo "== all tests passed on Linux and Windows (Wine)"
