#!/usr/bin/env bash
# The agents work inside the sandbox the systemd units give them, emulated
# without systemd (which need not be PID 1 here):
#  - the user and capabilities: an unprivileged user (nobody, like DynamicUser=)
#    with exactly the unit's CapabilityBoundingSet= as ambient capabilities;
#  - the unit's SystemCallFilter= lines as a seccomp allow list (denied calls
#    fail with EPERM, as SystemCallErrorNumber=EPERM), built from
#    `systemd-analyze syscall-filter` and compiled with gcc;
#  - ProtectProc=invisible + ProcSubset=pid: a private /proc mounted
#    hidepid=invisible,subset=pid.
# A TLS migration of another user's process (and of a root process) through
# deploy/memhaul-orchestrate must complete and verify byte for byte; and
# without any one of the sender's capabilities a migration must fail (each is needed).
# Not emulated: ProtectSystem=, PrivateTmp=, PrivateDevices=, LoadCredential=,
# RestrictAddressFamilies=, MemoryDenyWriteExecute=.
# Needs root, gcc, unshare, setpriv, jq, systemd-analyze; skips with a reason otherwise.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin=${MEMHAUL_BIN_DIR:-$root/.build/debug}
memhaul=$bin/memhaul
units=${UNITS_DIR:-$root/deploy/systemd}
skip() { echo "SKIP: $*"; exit 0; }
[[ $(id -u) -eq 0 ]] || skip "needs root (ptrace, setpriv, mount namespaces)"
for c in gcc unshare setpriv jq systemd-analyze; do command -v $c >/dev/null || skip "$c is not installed"; done
[[ -x $memhaul ]] || skip "no memhaul binary in $bin (swift build)"

work=$(mktemp -d /tmp/memhaul-sandbox.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# Unit directive values, continuation lines joined.
directive() { sed -e ':a' -e '/\\$/{N;s/\\\n//;ba}' "$1" | grep -vE '^[[:space:]]*[#;]' | sed -n "s/^$2=//p"; }

# --- the syscall filter of a unit, as a seccomp wrapper binary ----------------
declare -A members
group=
while IFS= read -r line; do
  t=${line#"${line%%[![:space:]]*}"}
  case $line in
    @*) group=${line%% *} ;;
    [[:space:]]*) [[ -n $group && -n $t && $t != \#* ]] && members[$group]+="$t " ;;
  esac
done < <(systemd-analyze syscall-filter 2>/dev/null)
expand() { local x; for x in $1; do if [[ $x == @* ]]; then expand "${members[$x]:-}"; else echo "$x"; fi; done; }

filter_binary() {  # filter_binary UNIT OUT: compile a wrapper that applies UNIT's SystemCallFilter= and execs argv[1]
  local unit=$1 out=$2 allow=() deny=() line
  while IFS= read -r line; do
    if [[ $line == ~* ]]; then deny+=(${line#\~}); else allow+=($line); fi
  done < <(directive "$unit" SystemCallFilter)
  ((${#allow[@]})) || { fail "$(basename "$unit"): no SystemCallFilter= allow list"; return 1; }
  local names
  names=$(comm -23 <(expand "${allow[*]}" | sort -u) <(expand "${deny[*]}" | sort -u))
  {
    echo '#include <stddef.h>'
    echo '#include <errno.h>'
    echo '#include <stdio.h>'
    echo '#include <unistd.h>'
    echo '#include <sys/prctl.h>'
    echo '#include <sys/syscall.h>'
    echo '#include <linux/seccomp.h>'
    echo '#include <linux/filter.h>'
    echo '#include <linux/audit.h>'
    echo 'static const int allowed[] = {'
    for n in $names; do printf '#ifdef __NR_%s\n  __NR_%s,\n#endif\n' "$n" "$n"; done
    echo '};'
    cat <<'EOF'
int main(int argc, char **argv) {
  enum { N = sizeof allowed / sizeof allowed[0] };
  struct sock_filter f[2 * N + 8];
  int k = 0;
  f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
  f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);  /* SystemCallArchitectures=native */
  f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
  f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
  for (int i = 0; i < N; i++) {
    f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, allowed[i], 0, 1);
    f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  }
  f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM);  /* SystemCallErrorNumber=EPERM */
  struct sock_fprog prog = { (unsigned short)k, f };
  if (argc < 2) return 2;
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog)) { perror("seccomp"); return 1; }
  execv(argv[1], argv + 1);
  perror("execv");
  return 127;
}
EOF
  } >"$out.c"
  gcc -O -o "$out" "$out.c" || { fail "cannot compile the seccomp wrapper for $(basename "$unit")"; return 1; }
}
filter_binary "$units/memhaul-sender.service" "$work/seccomp-sender" || exit 1
filter_binary "$units/memhaul-receiver.service" "$work/seccomp-receiver" || exit 1
# The emulation bites: setpriority (@resources, denied by both units) gets EPERM.
"$work/seccomp-receiver" /usr/bin/nice -n 1 /bin/true 2>&1 | grep -q 'not permitted' \
  || fail "the seccomp emulation does not deny setpriority"

# setpriv capability list (+sys_ptrace,...) of a unit's CapabilityBoundingSet=.
caps() { local c out=-all; for c in $(directive "$1" CapabilityBoundingSet); do c=${c#CAP_}; out+=",+${c,,}"; done; echo "$out"; }
sender_caps=$(caps "$units/memhaul-sender.service")
receiver_caps=$(caps "$units/memhaul-receiver.service")
echo "sender capabilities: $sender_caps; receiver: $receiver_caps"

# sandboxed CAPS FILTER CMD...: run CMD as nobody with CAPS, the seccomp FILTER and a hidepid /proc.
sandboxed() {  # (exec: the caller's $! is then the agent itself)
  local c=$1 f=$2; shift 2
  exec unshare -m --propagation private -- sh -c 'mount -t proc -o hidepid=invisible,subset=pid proc /proc && exec "$@"' sh \
    setpriv --reuid=nobody --regid=nogroup --clear-groups --inh-caps="$c" --ambient-caps="$c" --bounding-set="$c" --no-new-privs \
    "$f" "$@"
}

"$memhaul" certs init "$work/pki" --receiver-name localhost >/dev/null 2>&1 || fail "certs init"
chmod -R a+rX "$work/pki"   # stands in for LoadCredential= (files readable by the service user)
mkdir -p "$work/r" "$work/s"; chown nobody "$work/r" "$work/s"   # RuntimeDirectory=/StateDirectory= owned by the user

sandboxed "$receiver_caps" "$work/seccomp-receiver" "$memhaul" receive --listen 127.0.0.1:0 --images "$work/r/images" \
  --control "$work/r/receiver.sock" --certs "$work/pki" >"$work/receiver.out" 2>"$work/receiver.log" &
rpid=$!; pids+=($rpid)
sandboxed "$sender_caps" "$work/seccomp-sender" "$memhaul" sender --control "$work/s/sender.sock" --certs "$work/pki" \
  >"$work/sender.out" 2>"$work/sender.log" &
spid=$!; pids+=($spid)
for _ in $(seq 1 600); do grep -q listening "$work/receiver.out" && grep -q ready "$work/sender.out" && break; sleep 0.05; done
port=$(sed -n 's/^listening 127.0.0.1://p' "$work/receiver.out")
[[ -n $port ]] && grep -q ready "$work/sender.out" || { fail "agents did not start: $(tail -n 3 "$work/receiver.log" "$work/sender.log")"; exit 1; }

migrate_one() {  # migrate_one USER: a sleep owned by USER, migrated and verified
  local user=$1
  setpriv --reuid="$user" --regid="$(id -g "$user")" --clear-groups sleep 600 &
  local target=$!; pids+=($target)
  local result
  result=$("$root/deploy/memhaul-orchestrate" --pid "$target" --to "localhost:$port" --after stop --timeout 120 --interval 0.1 \
    --sender-ctl "env MEMHAUL_CONTROL=$work/s/sender.sock $memhaul ctl" \
    --receiver-ctl "env MEMHAUL_CONTROL=$work/r/receiver.sock $memhaul ctl" 2>"$work/orchestrate-$user.log")
  local state id
  state=$(jq -r .state <<<"$result" 2>/dev/null) id=$(jq -r .migration <<<"$result" 2>/dev/null)
  if [[ $state != completed ]]; then
    fail "migration of a $user process: ${state:-no result}: $(tail -n 3 "$work/orchestrate-$user.log" "$work/sender.log")"
  elif ! "$memhaul" image verify "$work/r/images/$id" --pid "$target" >"$work/verify-$user.log" 2>&1; then
    fail "image of the $user process differs: $(cat "$work/verify-$user.log")"
  else
    echo "ok: a $user process migrated by the sandboxed agents and verified"
  fi
  kill -KILL "$target" 2>/dev/null; wait "$target" 2>/dev/null
}
migrate_one daemon
migrate_one root

# Each sender capability is needed: without it a migration of another user's process fails.
for cap in $(directive "$units/memhaul-sender.service" CapabilityBoundingSet); do
  fewer=$(sed "s/,+${cap#CAP_}//I" <<<"$sender_caps")
  setpriv --reuid=daemon --regid=daemon --clear-groups sleep 600 &
  target=$!; pids+=($target)
  if (sandboxed "$fewer" "$work/seccomp-sender" "$memhaul" migrate --pid "$target" --to "localhost:$port" \
    --certs "$work/pki" --after stop) >"$work/without-$cap.log" 2>&1; then
    fail "a migration succeeded without $cap: it may not be needed"
  else
    echo "ok: without $cap the migration fails: $(grep -m1 -iE 'error|EPERM|EACCES|denied' "$work/without-$cap.log")"
  fi
  kill -KILL "$target" 2>/dev/null; wait "$target" 2>/dev/null
done

kill -TERM "$rpid" "$spid"
wait "$rpid"; rrc=$?
wait "$spid"; src=$?
[[ $rrc -eq 0 && $src -eq 0 ]] || fail "agents did not stop cleanly on SIGTERM (receiver $rrc, sender $src)"
# (The receiver logs what a sender reports: the capability-less runs above report their own EPERM.)
grep -h -iE 'EPERM|Operation not permitted' "$work/receiver.log" "$work/sender.log" | grep -v 'sender reported error' && fail "a call was refused inside the sandbox"

[[ $fails -eq 0 ]] && echo "sandbox: all passed" || echo "sandbox: $fails failures"
[[ $fails -eq 0 ]]
