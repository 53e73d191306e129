# Sourced by the e2e scripts (not run by scripts/test: no .sh suffix).
# Two test hosts (scripts/netns: mh-a 10.77.0.1 <-> mh-b 10.77.0.2, RATE),
# certificates, a receiver agent on B and a sender agent on A, all torn down
# on exit. Needs: root, bin (release or debug build directory), work_prefix.
#
#   two_hosts_up RATE [SENDER_OPTIONS...]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=${MEMHAUL_BIN_DIR:-$root/.build/debug}
memhaul=$bin/memhaul
work=$(mktemp -d "/tmp/${work_prefix:-memhaul-e2e}.XXXXXX")
A=${MEMHAUL_NETNS_A:-mh-a} B=${MEMHAUL_NETNS_B:-mh-b}
export MEMHAUL_NETNS_A=$A MEMHAUL_NETNS_B=$B   # scripts/netns reads them
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
fail() { echo "FAIL: $*" >&2; for f in "$work"/*.log; do echo "--- $f" >&2; tail -25 "$f" >&2; done; exit 1; }
sctl() { env MEMHAUL_CONTROL="$work/sender.sock" "$memhaul" ctl "$@"; }
rctl() { env MEMHAUL_CONTROL="$work/receiver.sock" "$memhaul" ctl "$@"; }
# host_exec NS CMD...: run CMD on a test host; the prefix it uses is
# host_prefix NS (sets the array hp; `"${hp[@]}" CMD &` leaves CMD's PID in $!).
# `ip netns exec` also gives CMD a mount namespace of its own; with net_only=1
# only the network namespace is entered (CRIU dumps a target whose mount
# namespace differs from its own).
host_prefix() { if [[ ${net_only:-0} == 1 ]]; then hp=(nsenter "--net=/run/netns/$1"); else hp=(ip netns exec "$1"); fi; }
host_exec() { local hp; host_prefix "$1"; shift; "${hp[@]}" "$@"; }
receiver_opts=()  # extra options for the receiver agent, set before two_hosts_up

# receiver_up: the receiver agent on B with $receiver_opts (its PID in $receiver_pid).
receiver_up() {
  local hp
  host_prefix $B
  "${hp[@]}" "$memhaul" receive --listen 10.77.0.2:7070 --images "$work/images" \
    --certs "$work/pki" --control "$work/receiver.sock" "${receiver_opts[@]}" >"$work/receiver.out" 2>>"$work/receiver.log" &
  receiver_pid=$!
  pids+=($receiver_pid)
}
# receiver_restart: a new receiver agent with the current $receiver_opts (same images, PKI, log).
receiver_restart() {
  kill -TERM "$receiver_pid"
  wait "$receiver_pid" 2>/dev/null || true  # its status is the signal's
  : >"$work/receiver.out"
  receiver_up
  for _ in $(seq 1 200); do grep -q . "$work/receiver.out" 2>/dev/null && break; sleep 0.05; done
  grep -q . "$work/receiver.out" || fail "receiver agent did not restart"
}

two_hosts_up() {
  local rate=$1; shift
  "$root/scripts/netns" up "$rate"
  "$memhaul" certs init "$work/pki" --receiver-name 10.77.0.2 >/dev/null
  : >"$work/receiver.log"
  receiver_up
  host_prefix $A
  "${hp[@]}" "$memhaul" sender --certs "$work/pki" --control "$work/sender.sock" "$@" \
    >"$work/sender.out" 2>"$work/sender.log" &
  pids+=($!)
  # Each agent prints one line once it listens.
  for f in receiver sender; do
    for _ in $(seq 1 200); do grep -q . "$work/$f.out" 2>/dev/null && break; sleep 0.05; done
    grep -q . "$work/$f.out" || fail "$f agent did not start"
  done
}
