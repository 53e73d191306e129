#!/usr/bin/env bash
# End-to-end acceptance: migrate a live redis-server under continuous SET load
# from host A to host B (network namespaces joined by a veth pair, tbf 1 Gbit/s),
# driven by deploy/memhaul-orchestrate through the agents' control sockets.
# Asserts: completed, image verifies byte for byte against the frozen source,
# rounds converged, redis-benchmark saw no errors before the freeze, and the
# status tells the truth about downtime: a frozen window longer than the limit
# carries the "exceeded the limit" warning. Downtime itself is measured and
# printed, not gated (a loaded machine makes any wall-clock bound flaky).
# Prints rounds, bytes, total time, downtime and the frozen window.
#
#   Tests/e2e/redis-two-hosts.sh [RATE]      (needs root; RATE default 1gbit)
rate=${1:-1gbit}
limit_ms=${MEMHAUL_E2E_DOWNTIME_LIMIT:-300}
source "$(dirname "$0")/two-hosts.bash"
two_hosts_up "$rate"

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
frozen=$(jq -r .frozen_ms <<<"$result")
rounds=$(jq -r .rounds <<<"$result")
reason=$(jq -r .cutover_reason <<<"$result")
[[ $frozen != null ]] || fail "no frozen_ms in the status"
if awk -v d="$frozen" -v l="$limit_ms" 'BEGIN { exit !(d > l) }'; then
  jq -e '.warnings | any(test("exceeded the limit"))' <<<"$result" >/dev/null \
    || fail "frozen $frozen ms > limit $limit_ms ms but no warning: $(jq -c .warnings <<<"$result")"
fi
[[ $reason == converged* ]] || fail "did not converge: $reason"
grep -qi "error" "$work/bench.log" && fail "redis-benchmark reported errors"
printf 'e2e redis two hosts (%s): rounds %s, %s wire bytes, %s page bytes, total %.0f ms, downtime %.1f ms, frozen %.1f ms (limit %s ms), verify %.0f ms, digest %s\n' \
  "$rate" "$rounds" "$(jq -r .transferred_bytes <<<"$result")" "$(jq -r .page_bytes <<<"$result")" \
  "$(jq -r .total_time_ms <<<"$result")" "$downtime" "$frozen" "$limit_ms" "$(jq -r .verify_ms <<<"$result")" "$(jq -r .digest <<<"$result")"
jq -r '.warnings[]? | "  warning: " + .' <<<"$result"
echo "1 passed, 0 failed"
