#!/usr/bin/env bash
# One headline run (500 rooms x 10 users x 2 msg/s, 2 workers) under chosen CPU placement,
# for the experiments in docs/bench/history.json and docs/bench/profile.json.
#
#   tests/bench/headline_ab.sh SERVER_CPUS LOADGEN_CPUS [ocm-loadgen flags...]
#   NICE=-10 tests/bench/headline_ab.sh 0-1 0-1          # loadgen at a higher priority
#   tests/bench/headline_ab.sh 0 1 --sockets member       # server on CPU 0, loadgen on 1
#   SERVER_FLAGS="--realtime-priority 10" tests/bench/headline_ab.sh 0-1 0-1
#   LOADGEN_WRAP="chrt -f 5" tests/bench/headline_ab.sh 0-1 0-1 --procs 1
#
# Prints one line: end-to-end and relay percentiles, late sends, loss, CPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
server_cpus=$1 loadgen_cpus=$2
shift 2
out=$(mktemp -d)
trap 'kill -TERM "$pid" 2>/dev/null || true; rm -rf "$out"' EXIT
: >"$out/server.log"  # exists before the wait loop greps it
# Plain TCRP only: versions that serve TLS by default are told not to (never port 9443).
no_tls=$(.venv/bin/ocm-control --help | grep -q -- "--no-tls" && echo --no-tls || true)
taskset -c "$server_cpus" .venv/bin/ocm-control --host 127.0.0.1 --tcp-port 0 --udp-port 0 \
    --stage1-port 0 --workers 2 --log-level info --admin-port=-1 $no_tls ${SERVER_FLAGS:-} \
    >"$out/server.log" 2>&1 &
pid=$!
for _ in $(seq 300); do  # the ready line (readiness handshake), 30 s at most
    grep -q "ready tcp=" "$out/server.log" && break
    kill -0 "$pid" 2>/dev/null || { cat "$out/server.log"; exit 1; }
    sleep 0.1
done
port=$(grep -o "ready tcp=[0-9.]*:[0-9]*" "$out/server.log" | sed 's/.*://')
[ -n "$port" ] || { echo "server not ready"; cat "$out/server.log"; exit 1; }
${LOADGEN_WRAP:-} taskset -c "$loadgen_cpus" nice -n "${NICE:-0}" .venv/bin/ocm-loadgen --server 127.0.0.1 \
    --tcp-port "$port" --server-pid "$pid" --rooms 500 --users 10 --rate 2 --duration 10 \
    --warmup 2 --size 100 --quiet --json "$out/run.json" "$@" >"$out/loadgen.log" 2>&1 || true
.venv/bin/python - "$out/run.json" <<'PY'
import sys, orjson
run = orjson.loads(open(sys.argv[1], "rb").read())["result"]
e, r, c = run["latency_ms"], run["relay_latency_ms"], run["counts"]
print(f"e2e p50 {e['p50']:.2f} p99 {e['p99']:.2f} p99.9 {e['p99.9']:.2f} ms | "
      f"relay p50 {r['p50']:.2f} p99 {r['p99']:.2f} ms | late sends {c['late_sends']} | "
      f"lost {c['lost']} | server CPU {run['server_cpu_pct']:.0f} % | loadgen CPU "
      + " + ".join(f"{x:.0f}" for x in run["loadgen_cpu_pct"]) + " % | waits: server "
      + f"{run['server_wait_pct']:.0f} %, loadgen "
      + " + ".join(f"{x:.0f}" for x in run["loadgen_wait_pct"]) + " %")
PY
