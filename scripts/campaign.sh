#!/usr/bin/env bash
# Robustness at scale (Linux): fuzzing the decoders that read what another
# process wrote, a kill -9 campaign, and a load test. Each part prints one
# line; the script exits non-zero if any part found a problem.
#
#   scripts/campaign.sh           full: 10^7 executions per fuzz target,
#                                 1,000 kill trials, 10^6 messages
#   scripts/campaign.sh --quick   20 s per fuzz target, 100 kill trials,
#                                 10^5 messages (what CI runs)
#
# Seeds and sizes can be changed with COPYDATA_FUZZ_EXECS,
# COPYDATA_FUZZ_SECONDS, COPYDATA_FUZZ_SEED, COPYDATA_KILL_TRIALS,
# COPYDATA_KILL_SEED and COPYDATA_LOAD_MESSAGES.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--quick" ]; then
    : "${COPYDATA_FUZZ_EXECS:=10000000}" "${COPYDATA_FUZZ_SECONDS:=20}"
    : "${COPYDATA_KILL_TRIALS:=100}" "${COPYDATA_LOAD_MESSAGES:=100000}"
else
    : "${COPYDATA_FUZZ_EXECS:=10000000}" "${COPYDATA_FUZZ_SECONDS:=86400}"
    : "${COPYDATA_KILL_TRIALS:=1000}" "${COPYDATA_LOAD_MESSAGES:=1000000}"
fi
export COPYDATA_FUZZ_EXECS COPYDATA_FUZZ_SECONDS COPYDATA_KILL_TRIALS COPYDATA_LOAD_MESSAGES

log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT
cargo test --release --locked -p copydata --test fuzz --test campaign --no-run 2>"$log/build" \
    || { cat "$log/build" >&2; exit 1; }

status=0
part() { # NAME TEST-FILE TEST-NAME
    if ! cargo test --release --locked -q -p copydata --test "$2" -- --ignored --exact "$3" --nocapture \
        >"$log/$1" 2>&1; then
        status=1
        echo "campaign: part $1 failed; its output:" >&2
        cat "$log/$1" >&2
    fi
}
part fuzz fuzz fuzz_campaign
part kill campaign kill_campaign
part load campaign load

# One line per part.
awk '/^FUZZ / { n += $3; c += $(NF-3) ; t++ } END {
    if (t) printf "FUZZ: %d executions over %d targets, %d crashes\n", n, t, c }' "$log/fuzz" || true
grep '^FUZZ ' "$log/fuzz" | sed 's/^/  /' || true
grep -h '^KILL:\|^LOAD:' "$log/kill" "$log/load" || true
exit $status
