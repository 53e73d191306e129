#!/usr/bin/env bash
# End-to-end acceptance of --restore criu: a real redis-server on host A (a
# network namespace), the init of its own PID namespace, under continuous SET
# load, is migrated to host B at RATE by deploy/memhaul-orchestrate --restore
# criu and runs on there. A client (service-gap.py, in A's network namespace:
# A's redis at 127.0.0.1, B's across the veth at 10.77.0.2) keeps writing
# unique keys, trying A then B, and records every acknowledged write.
# Asserts: completed with a restored PID; the source is gone; on B every key
# acknowledged before the freeze is there with its value and B takes writes.
# Prints the service gap the client saw and memhaul's split of its frozen
# window (freeze, final delta, verify, CRIU dump, transfer, restore). Times
# are printed, not gated.
#
# Needs a CRIU >= 4.1 in $MEMHAUL_CRIU; without one it reports itself skipped
# (exit 77, counted as skipped by scripts/test, never as passed).
#
#   MEMHAUL_CRIU=/path/to/criu Tests/e2e/criu-redis-two-hosts.sh [RATE]   (root; RATE default 1gbit)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/criu.bash"
criu_required

rate=${1:-1gbit}
limit_ms=${MEMHAUL_E2E_DOWNTIME_LIMIT:-300}
work_prefix=memhaul-e2e-criu
source "$here/two-hosts.bash"
receiver_opts=(--restore criu --criu "$criu")
two_hosts_up "$rate" --criu-restore --criu "$criu" --criu-dir "$work/criu-a"
redis_pidns_up 6379
# ~150 MB of keys, as a cache holds them.
host_exec $A redis-cli -p 6379 debug populate 300000 fill 512 | grep -q OK || fail "DEBUG POPULATE failed"

# The load: unique keys, one at a time; "ready" once A acknowledged 1000.
host_prefix $A
"${hp[@]}" python3 "$here/service-gap.py" --a 127.0.0.1:6379 --b 10.77.0.2:6379 --after-b 1000 \
  --out "$work/client.json" >"$work/client.out" 2>"$work/client.log" &
client=$!
pids+=($client)
for _ in $(seq 1 400); do grep -q '^ready' "$work/client.out" 2>/dev/null && break; kill -0 $client 2>/dev/null || break; sleep 0.05; done
grep -q '^ready' "$work/client.out" || fail "the client did not get going: $(cat "$work/client.out")"

result=$("$root/deploy/memhaul-orchestrate" --pid "$redis" --to 10.77.0.2:7070 \
  --sender-ctl "env MEMHAUL_CONTROL=$work/sender.sock $memhaul ctl" \
  --receiver-ctl "env MEMHAUL_CONTROL=$work/receiver.sock $memhaul ctl" \
  --restore criu --tcp close --downtime-limit "$limit_ms" --timeout 600 2>"$work/orchestrate.log") \
  || fail "orchestration failed: $result"
echo "$result" >"$work/result.json"
restored=$(jq -r '.restored_pid // empty' <<<"$result")
[[ $restored =~ ^[0-9]+$ ]] || fail "no restored_pid: $result"
pids+=($restored)
[[ $(jq -r .state <<<"$result") == completed ]] || fail "state $(jq -r .state <<<"$result")"

client_rc=0; wait $client || client_rc=$?
summary=$(cat "$work/client.json" 2>/dev/null || tail -1 "$work/client.out")
((client_rc == 0)) || fail "client: $summary"
# The source is gone (killed once B ran); the copy on B runs, untraced.
for _ in $(seq 1 200); do [[ -e /proc/$redis ]] && [[ $(awk '{print $3}' /proc/$redis/stat 2>/dev/null) != Z ]] || break; sleep 0.05; done
[[ -e /proc/$redis && $(awk '{print $3}' /proc/$redis/stat 2>/dev/null) != Z ]] && fail "the source $redis still exists"
why=$(untracked $restored) || fail "restored redis $restored: $why"
[[ $(host_exec $B redis-cli -p 6379 dbsize) -ge 300000 ]] || fail "B's redis lost the populated keys"

# memhaul's split of the frozen window; field names may change, so each is read once here.
ms() { jq -r --arg k "$1" '(.[$k] // empty) | . * 10 | round / 10' <<<"$result"; }
freeze=$(ms freeze_ms) downtime=$(ms downtime_ms) verify=$(ms verify_ms) dump=$(ms criu_dump_ms)
transfer=$(ms transfer_ms) restore=$(ms restore_ms) window=$(ms frozen_window_ms)
delta=$(awk -v d="$downtime" -v f="$freeze" 'BEGIN { printf "%.1f", d - f }')
printf 'e2e criu redis two hosts (%s): service gap %.1f ms (client: %s acknowledged on A, %s on B, %s checked, 0 missing)\n' \
  "$rate" "$(jq -r .gap_ms <<<"$summary")" "$(jq -r .acked_on_a <<<"$summary")" "$(jq -r .acked_on_b <<<"$summary")" "$(jq -r .checked <<<"$summary")"
printf '  memhaul frozen window %s ms = freeze %s + final delta %s + verify %s + criu dump %s + transfer %s + restore %s ms (rounds %s, %s)\n' \
  "$window" "$freeze" "$delta" "$verify" "$dump" "$transfer" "$restore" "$(jq -r .rounds <<<"$result")" "$(jq -r .cutover_reason <<<"$result")"
echo "1 passed, 0 failed"
