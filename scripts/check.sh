#!/usr/bin/env bash
# Static checks on both targets: formatting, clippy with warnings denied,
# and the docs (broken links are errors). Needs the Windows target
# (scripts/setup-windows.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

for target in "" x86_64-pc-windows-gnu; do
    name=${target:-host}
    args=(--workspace --locked --features copydata/serde,copydata/tokio)
    [ -n "$target" ] && args+=(--target "$target")
    echo "== clippy ($name)"
    cargo clippy "${args[@]}" --all-targets -q -- -D warnings
    echo "== docs ($name)"
    RUSTDOCFLAGS="-D warnings" cargo doc "${args[@]}" --no-deps -q
done
