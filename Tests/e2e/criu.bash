# Sourced by the CRIU e2e scripts (no .sh suffix: scripts/test does not run it).
#   criu_required        exit 77 (skipped, with the reason) unless $MEMHAUL_CRIU
#                        names a CRIU >= 4.1 whose `criu check` passes; sets criu
#   redis_pidns_up PORT  after two_hosts_up: redis-server on host A as PID 1 of
#                        its own PID namespace; sets redis (its PID seen from here)
skip() { echo "SKIPPED: $*"; exit 77; }

criu_required() {
  criu=${MEMHAUL_CRIU:-}
  [[ -n $criu ]] || skip "MEMHAUL_CRIU is not set (needs a CRIU >= 4.1; Debian 12's 3.17 fails on this kernel)"
  [[ -x $criu ]] || skip "MEMHAUL_CRIU=$criu is not an executable"
  local version major minor
  version=$("$criu" --version 2>/dev/null | sed -n 's/^Version: *\([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2/p')
  read -r major minor <<<"${version:-0 0}"
  ((major > 4 || (major == 4 && minor >= 1))) || skip "$criu is CRIU ${major}.${minor}, memhaul needs >= 4.1"
  "$criu" check >/dev/null 2>&1 || skip "'$criu check' fails on this machine"
  command -v redis-server >/dev/null && command -v python3 >/dev/null || skip "needs redis-server and python3"
  # redis, the agents and CRIU enter only the network namespaces and share the
  # root mount namespace (`ip netns exec` makes a new one, which CRIU would have to dump).
  net_only=1
}

# On one machine the restored copy cannot take the source's PID while the
# source still exists, hence the PID namespace. No log file (CRIU refuses an
# open file whose size changed after the dump), stdio on /dev/null (a pipe to
# a process outside the dump is refused), bound to 0.0.0.0 (CRIU restores the
# listener with its address, so it is reachable on B too).
redis_pidns_up() {
  local port=$1 unshare_pid hp
  host_prefix $A
  "${hp[@]}" unshare --pid --fork setsid redis-server --port "$port" --bind 0.0.0.0 --protected-mode no \
    --save '' --appendonly no --daemonize no --logfile '' --enable-debug-command yes \
    </dev/null >/dev/null 2>&1 &
  unshare_pid=$!
  pids+=($unshare_pid)
  for _ in $(seq 1 200); do host_exec $A redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done
  host_exec $A redis-cli -p "$port" ping 2>/dev/null | grep -q PONG || fail "redis did not start"
  redis=$(tr -d ' \n' </proc/$unshare_pid/task/$unshare_pid/children)
  [[ $redis =~ ^[0-9]+$ ]] || fail "no redis under unshare ($redis)"
  pids+=($redis)
}

# untracked PID: not stopped, not traced, no VMA registered for uffd-wp.
untracked() {
  local st
  st=$(awk '{print $3}' /proc/$1/stat 2>/dev/null)
  [[ $st == S || $st == R ]] || { echo "state '${st:-gone}'"; return 1; }
  [[ $(awk '/^TracerPid:/ {print $2}' /proc/$1/status) == 0 ]] || { echo "traced"; return 1; }
  ! grep -q '^VmFlags:.* uw' /proc/$1/smaps || { echo "uffd-wp still registered"; return 1; }
}
