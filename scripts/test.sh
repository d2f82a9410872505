#!/usr/bin/env bash
# The whole test suite: Linux natively, then Windows under Wine, from the
# same test sources. Installs what the Windows half needs on first use
# (scripts/setup-windows.sh). Extra arguments go to both `cargo test` runs.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== Linux: cargo test --workspace"
cargo test --workspace --locked "$@"

echo "== Windows (x86_64-pc-windows-gnu under Wine): cargo test --workspace"
bash scripts/setup-windows.sh
cargo test --workspace --locked --target x86_64-pc-windows-gnu "$@"
# Wine's server lingers a few seconds after the last program; end it now so
# no process outlives the suite.
wineserver -k 2>/dev/null || true

if ls /dev/shm 2>/dev/null | grep -q '^copydata-\(clitest\|test\)-'; then
    echo "test.sh: the suite left objects in /dev/shm:" >&2
    ls /dev/shm | grep '^copydata-' >&2
    exit 1
fi
echo "== all tests passed on Linux and Windows (Wine)"
