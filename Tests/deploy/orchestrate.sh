#!/usr/bin/env bash
# deploy/memhaul-orchestrate against a fake `memhaul ctl` (no agents, no root):
#  - hostile option values (command substitution, arithmetic subscripts, signs,
#    expressions) are refused with exit 2 and one line on stderr, and nothing
#    runs: no file is created, the ctl prefix is never called;
#  - a ctl prefix keeps a quoted argument with spaces as one word and expands nothing;
#  - a migration whose status calls keep failing still times out (exit 3, cancelled);
#  - --help prints usage, not the script.
# ORCHESTRATE=PATH tests another copy of the script (e.g. an old one).
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
orch=${ORCHESTRATE:-$root/deploy/memhaul-orchestrate}
command -v jq >/dev/null || { echo "SKIP: jq is not installed"; exit 0; }

work=$(mktemp -d /tmp/memhaul-orch-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
pass() { echo "ok: $*"; }

# The fake ctl: logs each call as [arg][arg]... to $FAKE_LOG and answers like an agent.
# FAKE_STATUS=fail makes `status --migration` fail (agent unreachable mid-migration).
fake="$work/fake ctl"
cat >"$fake" <<'EOF'
#!/usr/bin/env bash
{ printf '[%s]' "$@"; echo; } >>"$FAKE_LOG"
op= mig=
for a in "$@"; do
  case $a in
    status|migrate|cancel) [[ -z $op ]] && op=$a ;;
    --migration=*|--migration) mig=1 ;;
  esac
done
case $op in
  migrate) echo '{"ok":true,"result":{"migration":"m-1","status":{"state":"setup"}}}' ;;
  cancel) echo '{"ok":true,"result":{"status":{"state":"cancelled"}}}' ;;
  status)
    if [[ -n $mig ]]; then
      [[ ${FAKE_STATUS:-} == fail ]] && { echo '{"ok":false,"error":{"code":"internal","message":"down"}}'; exit 1; }
      echo '{"ok":true,"result":{"status":{"migration":"m-1","state":"completed","counters":{"round":3,"transferred_bytes":4096,"remaining_bytes":0,"dirty_rate_bytes_per_second":0,"throttle_percent":0,"rounds":3},"digest":"d"}}}'
    else
      echo '{"ok":true,"result":{"sessions":[{"migration":"m-1","state":"complete"}]}}'
    fi ;;
  *) echo '{"ok":false}'; exit 1 ;;
esac
EOF
chmod +x "$fake"
cp "$fake" "$work/fakectl"
export FAKE_LOG=$work/calls
# A plain prefix (one word, no blanks), which any version of the script can run,
# so that a refused value is refused for itself and not for an unusable prefix.
prefix=$work/fakectl

run() {  # run ARGS...: the script with the fake prefix; sets rc, out, err
  : >"$FAKE_LOG"
  out=$(timeout 20 "$orch" --sender-ctl "$prefix" --receiver-ctl "$prefix" "$@" 2>"$work/err")
  rc=$?
  err=$(<"$work/err")
}

# 1. Hostile values: refused before anything runs.
pwned=/tmp/pwned-$$
rm -f "$pwned"
payloads=(
  "x[\$(touch $pwned)]"
  "pid[\$(touch $pwned)]"      # a set variable: set -u does not stop this one
  "SECONDS[\$(touch $pwned)]"
  "\$(touch $pwned)"
  "\`touch $pwned\`"
  "1;touch $pwned"
  "1 + 1"
  "-1"
  "1e3"
  "0x10"
  "a[1]"
  "1\$(touch $pwned)"
  $'1\ntouch '"$pwned"
  ""
)
for opt in --timeout --interval --downtime-limit --max-bandwidth --max-rounds --tightening-rounds --max-time --resume-timeout --pid; do
  for p in "${payloads[@]}"; do
    if [[ $opt == --pid ]]; then run --pid "$p" --to 127.0.0.1:7070
    else run --pid 4242 --to 127.0.0.1:7070 "$opt" "$p"; fi
    what="$opt '$p'"
    [[ $rc -eq 2 ]] || fail "$what: exit $rc, want 2"
    [[ ! -e $pwned ]] || { fail "$what: ran a command ($pwned exists)"; rm -f "$pwned"; }
    [[ ! -s $FAKE_LOG ]] || fail "$what: the ctl prefix was called: $(head -1 "$FAKE_LOG")"
    [[ $(wc -l <<<"$err") -eq 1 && $err == memhaul-orchestrate:* ]] || fail "$what: want one error line, got: $err"
  done
done
for bad in "--to x;touch\$IFS$pwned:1" "--to host:0" "--to host:99999" "--id a/b" "--id \$(touch$pwned)" "--after rm" "--timeout 0" "--interval 0.0" \
  "--restore \$(touch$pwned)" "--restore podman" "--criu-route fast" "--tcp open"; do
  read -r o v <<<"$bad"
  run --pid 4242 --to 127.0.0.1:7070 "$o" "$v"
  [[ $rc -eq 2 && ! -e $pwned && ! -s $FAKE_LOG ]] || fail "$bad: exit $rc, calls: $(cat "$FAKE_LOG")"
  rm -f "$pwned"
done
run --pid 4242 --to 127.0.0.1:7070 --timeout
[[ $rc -eq 2 && $err == *"--timeout needs a value"* ]] || fail "--timeout without a value: exit $rc: $err"
[[ $fails -eq 0 ]] && pass "hostile option values are refused (exit 2, one line) and run nothing"

# 2. A good run: the prefix's words survive as given, values pass through.
# This prefix: the fake's path has a space, so it is quoted inside the prefix.
before=$fails
prefix="'$fake' 'arg with  spaces' \$HOME *"
run --pid 4242 --to '[::1]:7070' --id m-1 --timeout 08 --interval 0.1 --downtime-limit 300.5 --max-rounds 0 --after resume
[[ $rc -eq 0 ]] || fail "good run: exit $rc: $err"
first=$(head -1 "$FAKE_LOG")
[[ $first == "[arg with  spaces][\$HOME][*][status]" ]] || fail "ctl prefix words: got $first"
grep -q '300.5' "$FAKE_LOG" && grep -q 'resume' "$FAKE_LOG" || fail "migrate options not passed: $(cat "$FAKE_LOG")"
[[ $(jq -r '.state' <<<"$out" 2>/dev/null) == completed && $(jq -r '.receiver.migration' <<<"$out" 2>/dev/null) == m-1 ]] \
  || fail "result JSON: $out"
[[ $fails -eq $before ]] && pass "a ctl prefix keeps quoted spaces, \$ and * literal; result JSON printed"

# 2b. --restore criu and its CRIU options reach the sender agent as ctl options.
before=$fails
prefix=$work/fakectl
run --pid 4242 --to 127.0.0.1:7070 --restore criu --criu-route parent --tcp close --shell-job
[[ $rc -eq 0 ]] || fail "--restore criu: exit $rc: $err"
grep -q '\[migrate\].*\[--restore=criu\]' "$FAKE_LOG" && grep -q '\[--criu-route=parent\]' "$FAKE_LOG" \
  && grep -q '\[--tcp=close\]' "$FAKE_LOG" && grep -q '\[--shell-job\]' "$FAKE_LOG" || fail "--restore options not passed: $(cat "$FAKE_LOG")"
[[ $fails -eq $before ]] && pass "--restore criu, --criu-route, --tcp and --shell-job are passed to the sender agent"

# 2c. --strict and --strict-attempts reach the sender agent.
before=$fails
run --pid 4242 --to 127.0.0.1:7070 --downtime-limit 50 --strict --strict-attempts 2
[[ $rc -eq 0 ]] || fail "--strict: exit $rc: $err"
grep -q '\[migrate\].*\[--downtime-limit=50\].*\[--strict\]\[--strict-attempts=2\]' "$FAKE_LOG" || fail "--strict options not passed: $(cat "$FAKE_LOG")"
[[ $fails -eq $before ]] && pass "--strict and --strict-attempts are passed to the sender agent"

# 2d. --tightening-rounds reaches the sender agent.
before=$fails
run --pid 4242 --to 127.0.0.1:7070 --tightening-rounds 0
[[ $rc -eq 0 ]] || fail "--tightening-rounds: exit $rc: $err"
grep -q '\[migrate\].*\[--tightening-rounds=0\]' "$FAKE_LOG" || fail "--tightening-rounds not passed: $(cat "$FAKE_LOG")"
[[ $fails -eq $before ]] && pass "--tightening-rounds is passed to the sender agent"

before=$fails
run --pid 4242 --to 127.0.0.1:7070 --sender-ctl "'$fake' 'unbalanced"
[[ $rc -eq 2 && ! -s $FAKE_LOG ]] || fail "unbalanced quote in a prefix: exit $rc"
[[ $fails -eq $before ]] && pass "a prefix with an unbalanced quote is refused"

# 3. Status calls keep failing: the deadline still holds, and the migration is cancelled.
before=$fails
prefix=$work/fakectl
FAKE_STATUS=fail run --pid 4242 --to 127.0.0.1:7070 --timeout 1 --interval 0.2
[[ $rc -eq 3 ]] || fail "failing status: exit $rc, want 3 (timed out): $err"
grep -q 'cancel' "$FAKE_LOG" || fail "failing status: no cancel call"
[[ $fails -eq $before ]] && pass "a migration whose status keeps failing times out and is cancelled"

# 4. --help is usage text.
before=$fails
help=$("$orch" --help 2>&1); hrc=$?
[[ $hrc -eq 0 && $help == Usage:* && $help == *--timeout* && $help == *"Exit status"* ]] || fail "--help: exit $hrc, text: ${help:0:200}"
grep -qE 'set -uo|while \(\(|esac|\$\(' <<<"$help" && fail "--help prints code: $(grep -E 'set -uo|while|esac' <<<"$help" | head -2)"
[[ $fails -eq $before ]] && pass "--help prints usage"

[[ $fails -eq 0 ]] && echo "orchestrate: all passed" || echo "orchestrate: $fails failures"
[[ $fails -eq 0 ]]
