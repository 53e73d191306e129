#!/usr/bin/env bash
# Failure path of --restore criu: the link between the hosts is cut after the
# freeze, while A's CRIU dump runs (so the dump files never reach B). Expected:
# the migration fails with an error that says the connection was lost, during
# which step, and that the source is resumed; the
# source runs on at A, untracked (not stopped, not traced, no uffd-wp VMA), and
# still serves its keys; B runs no copy (no process in B's network namespace
# but its receiver agent).
# The cut is triggered by an event, not a time: A's criu is a wrapper that,
# on `criu dump`, announces itself in a file and waits until the test has
# cut the link, then runs the real dump.
#
#   MEMHAUL_CRIU=/path/to/criu Tests/e2e/criu-link-cut.sh      (needs root; skipped without CRIU >= 4.1)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/criu.bash"
criu_required
work_prefix=memhaul-e2e-criu-cut
source "$here/two-hosts.bash"

cat >"$work/criu-a" <<WRAP
#!/bin/sh
if [ "\$1" = dump ]; then
  : > "$work/dumping"
  while [ ! -e "$work/cut" ]; do sleep 0.01; done
fi
exec "$criu" "\$@"
WRAP
chmod +x "$work/criu-a"
receiver_opts=(--restore criu --criu "$criu")
two_hosts_up 1gbit --criu-restore --criu "$work/criu-a" --criu-dir "$work/criu-dir-a" --peer-timeout 3
receiver_agent=${pids[0]}
redis_pidns_up 6379
host_exec $A redis-cli -p 6379 debug populate 100000 fill 512 | grep -q OK || fail "DEBUG POPULATE failed"
host_exec $A redis-cli -p 6379 set marker before-the-cut | grep -q OK || fail "SET failed"

"$root/deploy/memhaul-orchestrate" --pid "$redis" --to 10.77.0.2:7070 --id criu-cut \
  --sender-ctl "env MEMHAUL_CONTROL=$work/sender.sock $memhaul ctl" \
  --receiver-ctl "env MEMHAUL_CONTROL=$work/receiver.sock $memhaul ctl" \
  --restore criu --tcp close --resume-timeout 3 --timeout 300 \
  >"$work/result.json" 2>"$work/orchestrate.log" &
orchestrate=$!
for _ in $(seq 1 2400); do [[ -e $work/dumping ]] && break; kill -0 $orchestrate 2>/dev/null || break; sleep 0.05; done
[[ -e $work/dumping ]] || fail "criu dump never started: $(cat "$work/result.json")"
ip -n $A link set "${A:0:12}-v" down
: >"$work/cut"

rc=0; wait $orchestrate || rc=$?
result=$(cat "$work/result.json")
((rc == 1)) || fail "orchestrator exit $rc (want 1, failed): $result"
[[ $(jq -r .state <<<"$result") == failed ]] || fail "state $(jq -r .state <<<"$result")"
error=$(jq -r '.error | if type == "object" then (.message // tostring) else (. // "") end' <<<"$result")
[[ -n $error ]] || fail "no error in the result: $result"
# Not a bare errno: what broke, and what became of the source.
[[ $error == *"lost the connection to the receiver while "* && $error == *"the source is resumed on this host"* ]] \
  || fail "the error does not say what broke and where the source is: $error"
why=$(untracked $redis) || fail "source $redis after the cut: $why"
[[ $(host_exec $A redis-cli -p 6379 get marker) == before-the-cut ]] || fail "the source lost its keys"
[[ $(host_exec $A redis-cli -p 6379 dbsize) -ge 100001 ]] || fail "the source lost its keys"
host_exec $A redis-cli -p 6379 set after the-cut | grep -q OK || fail "the source takes no writes"
# B: nothing runs in its network namespace but the receiver agent.
b_net=$(readlink /proc/$receiver_agent/ns/net)
others=()
for p in /proc/[0-9]*; do
  p=${p#/proc/}
  [[ $p != "$receiver_agent" && $(readlink /proc/$p/ns/net 2>/dev/null) == "$b_net" ]] && others+=("$p $(tr '\0' ' ' </proc/$p/cmdline 2>/dev/null)")
done
((${#others[@]} == 0)) || fail "processes left on B: ${others[*]}"
echo "e2e criu link cut during the dump: failed as it should ($error); source $redis runs on, untracked; B runs nothing"
echo "1 passed, 0 failed"
