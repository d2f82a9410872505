#!/usr/bin/env bash
# The whole test suite: Linux natively, then Windows under Wine, from the
# same test sources. Installs what the Windows half needs on first use
# (scripts/setup-windows.sh). Extra arguments go to both `cargo test` runs.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== Linux: cargo test --workspace"
COPYDATA_REQUIRE_EXAMPLES=1 cargo test --workspace --locked "$@"

echo "== Windows (x86_64-pc-windows-gnu under Wine): cargo test --workspace"
bash scripts/setup-windows.sh
# A plain Win32 program for the WM_COPYDATA interoperability tests.
mkdir -p target/c
x86_64-w64-mingw32-gcc -O2 -Wall -o target/c/copydata-peer.exe crates/copydata/tests/c/peer.c -luser32
COPYDATA_C_PEER="$PWD/target/c/copydata-peer.exe" COPYDATA_REQUIRE_EXAMPLES=1 \
    cargo test --workspace --locked --target x86_64-pc-windows-gnu "$@"
# Wine's server lingers a few seconds after the last program; end it now so
# no process outlives the suite.
wineserver -k 2>/dev/null || true

# Nothing may be left behind: no shared-memory objects, no mailbox files.
runtime=${COPYDATA_RUNTIME_DIR:-${XDG_RUNTIME_DIR:+$XDG_RUNTIME_DIR/copydata}}
runtime=${runtime:-/tmp/copydata-$(id -u)}
left=$( (ls /dev/shm; ls "$runtime") 2>/dev/null | grep -- 'copydata-\(clitest\|test\|demo\|example\)-' || true)
if [ -n "$left" ]; then
    echo "test.sh: the suite left objects behind (in /dev/shm or $runtime):" >&2
    echo "$left" >&2
    exit 1
fi
echo "== all tests passed on Linux and Windows (Wine)"
