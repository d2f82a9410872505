#!/usr/bin/env bash
# The Python package's tests (Linux): builds and installs python/ into a
# virtual environment under target/ (kept between runs, so only what changed
# is rebuilt), with pytest and numpy, checks the type stubs against the
# built module (mypy's stubtest), and runs pytest against the copydata tool
# of this checkout as the Rust peer. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/python-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
cargo build -p copydata-cli --locked -q
# pip builds the extension with maturin (fetched through build isolation);
# its cargo build goes to target/python, reused by the next run.
CARGO_TARGET_DIR="$PWD/target/python" \
    "$venv/bin/python" -m pip install -q --disable-pip-version-check ./python pytest numpy "mypy>=1.18"
# (From target/, where its cache may go.)
(cd target && "../$venv/bin/python" -m mypy.stubtest --ignore-disjoint-bases copydata)
COPYDATA_BIN="$PWD/target/debug/copydata" "$venv/bin/pytest" -q python/tests "$@"
