#!/usr/bin/env bash
# Routing cost of a sticky traffic policy, in one run on this machine: `simple` (INT32 [1,16]) at
# concurrency 8, from temporary repositories built from model_repository/simple:
#   single   simple/1 and its config, no traffic file (the version policy picks version 1)
#   sticky   copies of simple/1 as versions 1, 2, 3, `version_policy: { all: {} }`, and
#            traffic.yaml: weights 34/33/33, routing_key x-user-id (weighted rendezvous hashing)
#   single3  as single, with `instance_group` count 3: as many instance threads as the three
#            versions of sticky have together (one each), to tell routing from parallelism
#   split3   the sticky repository, driven without routing keys: the same three versions and
#            weights, each request assigned at random by weight (no key to hash)
# `switchyard perf --routing-keys N` sends the `routing_key` request parameter from N distinct keys
# against every target but split3 (the single-version models have no policy, so there the key is
# parsed and ignored: single, sticky and single3 carry the same bytes). One daemon runs at a time,
# started afresh for every run, so that the client and one server share the cores; the targets take
# turns in rounds, the order rotating each round. Before the rounds, a short check that the sticky
# model spreads keys over its three versions and that one key always reaches the same version.
# Prints per-round figures, medians, the ratios sticky / single throughput (the goal: >= 0.97),
# sticky / single3 and sticky / split3, and the p99s.
#
# Environment (all optional):
#   ROUTING_ROUNDS=3  ROUTING_SECS=5  ROUTING_WARMUP_SECS=1  ROUTING_CONCURRENCY=8
#   ROUTING_KEYS=1000        distinct routing keys per perf run
#   ROUTING_CONNECTIONS=4    HTTP/2 connections per perf run
#   ROUTING_TARGETS="single sticky single3 split3"   subset/order of targets
#   ROUTING_SKIP_BUILD=1     use target/release/switchyard as it is
#   ROUTING_BIN=PATH         run this switchyard binary instead (implies ROUTING_SKIP_BUILD)
#   ROUTING_OUT=DIR          keep the repositories, logs and JSON there
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${ROUTING_ROUNDS:-3}
SECS=${ROUTING_SECS:-5}
WARMUP=${ROUTING_WARMUP_SECS:-1}
CONCURRENCY=${ROUTING_CONCURRENCY:-8}
KEYS=${ROUTING_KEYS:-1000}
CONNECTIONS=${ROUTING_CONNECTIONS:-4}
TARGETS=(${ROUTING_TARGETS:-single sticky single3 split3})
OUT=${ROUTING_OUT:-$(mktemp -d -t switchyard-routing.XXXXXX)}
mkdir -p "$OUT"

# log, die, listening_addr (its traps are replaced below: one daemon at a time, in PID).
source "$ROOT/benches/lib.sh" routing

PID=
stop_daemon() {
    if [[ -n $PID ]]; then
        kill -TERM "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
        PID=
    fi
}
trap stop_daemon EXIT
trap 'exit 130' INT TERM


SY=${ROUTING_BIN:-$ROOT/target/release/switchyard}
if [[ -z ${ROUTING_SKIP_BUILD:-} && -z ${ROUTING_BIN:-} ]]; then
    log "cargo build --release"
    cargo build --release --bin switchyard
fi
[[ -x $SY ]] || die "$SY missing"

# --- the repositories ---
SRC=model_repository/simple
rm -rf "$OUT/single" "$OUT/sticky" "$OUT/single3"
for t in single single3; do
    mkdir -p "$OUT/$t/simple/1"
    cp "$SRC/1/model.onnx" "$OUT/$t/simple/1/"
done
cp "$SRC/config.pbtxt" "$OUT/single/simple/"
sed 's/count: 1,/count: 3,/' "$SRC/config.pbtxt" >"$OUT/single3/simple/config.pbtxt"
grep -q 'count: 3,' "$OUT/single3/simple/config.pbtxt" || die "no instance_group count in $SRC/config.pbtxt"
for v in 1 2 3; do
    mkdir -p "$OUT/sticky/simple/$v"
    cp "$SRC/1/model.onnx" "$OUT/sticky/simple/$v/"
done
{
    cat "$SRC/config.pbtxt"
    echo 'version_policy: { all: {} }'
} >"$OUT/sticky/simple/config.pbtxt"
cat >"$OUT/sticky/simple/traffic.yaml" <<'EOF'
weights:
  "1": 34
  "2": 33
  "3": 33
routing_key: x-user-id
EOF

# start_daemon TARGET: serves the target's repository on a port it picks; sets PID and ADDR from
# its `listening` line (logged once the models are loaded).
start_daemon() {
    local repo=$1 logf=$OUT/$1-daemon.log
    [[ $repo == split3 ]] && repo=sticky
    start_switchyard "$SY" "$OUT/$repo" "$logf" --model-control-mode none
    PID=$SY_PID ADDR=$SY_ADDR
}

# perf NAME OUTFILE KEYS CONCURRENCY SECS WARMUP
perf() {
    "$SY" perf --url "http://$ADDR" -m simple --concurrency "$4" --connections "$CONNECTIONS" \
        --measurement-secs "$5" --warmup-secs "$6" --routing-keys "$3" \
        --json "$2.json" >"$2.txt" 2>>"$OUT/perf.log" || die "perf against $1 failed; see $OUT/perf.log"
}

# --- check: keys spread over three versions; one key sticks to one version ---
start_daemon sticky
log "check: sticky model at $ADDR"
perf sticky "$OUT/check-spread" "$KEYS" "$CONCURRENCY" 1 0.2
perf sticky "$OUT/check-one-key" 1 "$CONCURRENCY" 0.5 0.2
stop_daemon
python3 - "$OUT" <<'EOF'
import json, sys
out = sys.argv[1]
spread = json.load(open(f"{out}/check-spread.json"))[0]["versions"]
one = json.load(open(f"{out}/check-one-key.json"))[0]["versions"]
total = sum(spread.values())
shares = ", ".join(f"v{v} {n / total:.1%}" for v, n in sorted(spread.items()))
print(f"check: {total} keyed requests served by {shares}; one key -> {one}", file=sys.stderr)
if sorted(spread) != ["1", "2", "3"] or len(one) != 1:
    sys.exit("routing: error: the sticky model does not route by key as expected")
EOF

# --- interleaved rounds, one daemon at a time ---
n=${#TARGETS[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    for ((i = 0; i < n; i++)); do
        t=${TARGETS[$(((i + r - 1) % n))]}
        start_daemon "$t"
        log "round $r/$ROUNDS: $t at $ADDR"
        keys=$KEYS
        [[ $t == split3 ]] && keys=0
        perf "$t" "$OUT/$t-$r" "$keys" "$CONCURRENCY" "$SECS" "$WARMUP"
        stop_daemon
    done
done

# --- summary ---
python3 - "$OUT" "$ROUNDS" "${TARGETS[@]}" <<'EOF'
import json, statistics, sys

out, rounds, targets = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
runs = {t: [json.load(open(f"{out}/{t}-{r}.json"))[0] for r in range(1, rounds + 1)] for t in targets}
r0 = runs[targets[0]][0]
print(f"\nsimple, concurrency {r0['concurrency']}, {r0['connections']} connections, batch {r0['batch']}, "
      f"{r0['routing_keys']} routing keys, {r0['duration_secs']:g}s per run, {rounds} rounds")
print(f"{'round':>6} | " + " | ".join(f"{t + ' req/s':>13} {'p50 us':>7} {'p99 us':>7}" for t in targets)
      + " | versions (sticky)")
row = lambda x: f"{x['throughput_rps']:>13.1f} {x['latency_us']['p50']:>7} {x['latency_us']['p99']:>7}"
for i in range(rounds):
    versions = ""
    if "sticky" in runs:
        versions = ",".join(f"{v}:{n}" for v, n in sorted(runs["sticky"][i]["versions"].items()))
    print(f"{i + 1:>6} | " + " | ".join(row(runs[t][i]) for t in targets) + f" | {versions}")
med = {t: {k: statistics.median(f(x) for x in rs) for k, f in (
           ("rps", lambda x: x["throughput_rps"]),
           ("p50", lambda x: x["latency_us"]["p50"]),
           ("p99", lambda x: x["latency_us"]["p99"]))}
       for t, rs in runs.items()}
print(f"{'median':>6} | " + " | ".join(
    f"{med[t]['rps']:>13.1f} {med[t]['p50']:>7.0f} {med[t]['p99']:>7.0f}" for t in targets) + " |")
print()
if "sticky" in med and "single" in med:
    ratio = med["sticky"]["rps"] / med["single"]["rps"]
    print(f"sticky / single  throughput {ratio:.3f} (goal >= 0.97: {'met' if ratio >= 0.97 else 'NOT met'}), "
          f"p99 {med['sticky']['p99'] / med['single']['p99']:.3f}")
for other in ("single3", "split3"):
    if "sticky" in med and other in med:
        print(f"sticky / {other:<7} throughput {med['sticky']['rps'] / med[other]['rps']:.3f}, "
              f"p99 {med['sticky']['p99'] / med[other]['p99']:.3f}")
errors = {t: sum(x["error_count"] for x in rs) for t, rs in runs.items()}
print("errors: " + ", ".join(f"{t} {e}" for t, e in errors.items()))
for t in targets:
    if t != "sticky":
        served = {}
        for x in runs[t]:
            for v, n in x["versions"].items():
                served[v] = served.get(v, 0) + n
        print(f"{t} served versions " + ",".join(f"{v}:{n}" for v, n in sorted(served.items())))
if any(errors.values()):
    print("WARNING: some runs had errors; see the JSON files")
print(f"(repositories, logs and JSON in {out})")
EOF
