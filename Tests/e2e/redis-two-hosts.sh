#!/usr/bin/env bash
# End-to-end acceptance: migrate a live redis-server under continuous SET load
# from host A to host B (network namespaces joined by a veth pair, tbf 1 Gbit/s),
# driven by deploy/memhaul-orchestrate through the agents' control sockets.
# Asserts: completed, image verifies byte for byte against the frozen source,
# downtime within the limit, rounds converged, redis-benchmark saw no errors
# before the freeze. Prints rounds, bytes, total time and downtime.
#
#   Tests/e2e/redis-two-hosts.sh [RATE]      (needs root; RATE default 1gbit)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
rate=${1:-1gbit}
bin=${MEMHAUL_BIN_DIR:-$root/.build/debug}
memhaul=$bin/memhaul
limit_ms=${MEMHAUL_E2E_DOWNTIME_LIMIT:-300}
work=$(mktemp -d /tmp/memhaul-e2e.XXXXXX)
A=mh-a B=mh-b
pids=()
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  "$root/scripts/netns" down
  rm -rf "$work"
  return 0
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; for f in "$work"/*.log; do echo "--- $f" >&2; tail -20 "$f" >&2; done; exit 1; }

"$root/scripts/netns" up "$rate"
"$memhaul" certs init "$work/pki" --receiver-name 10.77.0.2 >/dev/null

# Host B: receiver agent.
ip netns exec $B "$memhaul" receive --listen 10.77.0.2:7070 --images "$work/images" \
  --certs "$work/pki" --control "$work/receiver.sock" >"$work/receiver.out" 2>"$work/receiver.log" &
pids+=($!)
# Host A: sender agent.
ip netns exec $A "$memhaul" sender --certs "$work/pki" --control "$work/sender.sock" \
  >"$work/sender.out" 2>"$work/sender.log" &
pids+=($!)
# Wait for both agents' ready lines (they print once listening).
for f in receiver sender; do
  for _ in $(seq 1 200); do grep -q . "$work/$f.out" 2>/dev/null && break; sleep 0.05; done
  grep -q . "$work/$f.out" || fail "$f agent did not start"
done

# Host A: redis with 300k keys (~150 MB), under continuous SET load on a hot
# set of 20k keys, as a cache sees it.
ip netns exec $A redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no \
  --daemonize no >"$work/redis.log" 2>&1 &
redis=$!
pids+=($redis)
for _ in $(seq 1 200); do ip netns exec $A redis-cli -p 6379 ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done
ip netns exec $A redis-cli -p 6379 ping | grep -q PONG || fail "redis did not start"
ip netns exec $A redis-benchmark -p 6379 -t set -n 300000 -r 300000 -d 512 -P 32 -q >/dev/null
ip netns exec $A redis-benchmark -p 6379 -t set -n 1000000000 -r 20000 -d 512 -P 1 -c 1 -q -l \
  >"$work/bench.log" 2>&1 &
load=$!
pids+=($load)
sleep 1   # let the load reach steady state (not a synchronisation: nothing waits on it)

result=$("$root/deploy/memhaul-orchestrate" --pid "$redis" --to 10.77.0.2:7070 \
  --sender-ctl "env MEMHAUL_CONTROL=$work/sender.sock $memhaul ctl" \
  --receiver-ctl "env MEMHAUL_CONTROL=$work/receiver.sock $memhaul ctl" \
  --downtime-limit "$limit_ms" --after stop --timeout 600 2>"$work/orchestrate.log") \
  || fail "orchestration failed: $result"
echo "$result" >"$work/result.json"
kill -KILL "$load" 2>/dev/null || true
wait "$load" 2>/dev/null || true

id=$(jq -r .migration <<<"$result")
state=$(jq -r .state <<<"$result")
[[ $state == completed ]] || fail "state $state"
# The source is left frozen (after=stop): compare it with the image byte for byte.
st=$(awk '{print $3}' /proc/$redis/stat)
[[ $st == T ]] || fail "source not frozen (state $st)"
"$memhaul" image verify "$work/images/$id" --pid "$redis" >"$work/verify.log" || fail "image verify: $(cat "$work/verify.log")"
downtime=$(jq -r .downtime_ms <<<"$result")
rounds=$(jq -r .rounds <<<"$result")
reason=$(jq -r .cutover_reason <<<"$result")
awk -v d="$downtime" -v l="$limit_ms" 'BEGIN { exit !(d <= l) }' || fail "downtime $downtime ms > limit $limit_ms ms"
[[ $reason == converged* ]] || fail "did not converge: $reason"
grep -qi "error" "$work/bench.log" && fail "redis-benchmark reported errors"
printf 'e2e redis two hosts (%s): rounds %s, %s wire bytes, %s page bytes, total %.0f ms, downtime %.1f ms, verify %.0f ms, digest %s\n' \
  "$rate" "$rounds" "$(jq -r .transferred_bytes <<<"$result")" "$(jq -r .page_bytes <<<"$result")" \
  "$(jq -r .total_time_ms <<<"$result")" "$downtime" "$(jq -r .verify_ms <<<"$result")" "$(jq -r .digest <<<"$result")"
echo "1 passed, 0 failed"
