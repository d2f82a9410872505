#!/usr/bin/env bash
# Static checks on both targets: formatting, clippy with warnings denied,
# and the docs (broken links are errors). Needs the Windows target
# (scripts/setup-windows.sh installs it) and, for the Python package, python3.
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

# The Python package (python/) is a crate of its own, outside the workspace
# (see python/Cargo.toml): formatting and clippy on both targets. Its
# documentation is its docstrings and type stubs, so no rustdoc.
python_crate=(--manifest-path python/Cargo.toml --locked --target-dir target/python)
echo "== python/: cargo fmt --check"
cargo fmt --manifest-path python/Cargo.toml -- --check
for target in "" x86_64-pc-windows-gnu; do
    echo "== python/: clippy (${target:-host})"
    cargo clippy "${python_crate[@]}" ${target:+--target "$target"} --all-targets -q -- -D warnings
done

# Every crate packs for crates.io with its licence files (no build: the
# checks above compiled everything; --allow-dirty so it runs before a commit).
echo "== cargo package"
rm -rf target/package
cargo package --workspace --locked --no-verify --allow-dirty -q
for crate in target/package/*.crate; do
    files=$(tar -tzf "$crate")
    for file in LICENSE-MIT LICENSE-APACHE README.md; do
        grep -q "^[^/]*/$file\$" <<<"$files" || { echo "check.sh: $crate lacks $file" >&2; exit 1; }
    done
done
