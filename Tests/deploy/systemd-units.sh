#!/usr/bin/env bash
# The systemd units in deploy/systemd, checked statically (no systemd needed to run them):
#  - systemd-analyze verify finds nothing wrong;
#  - systemd-analyze security --offline: the receiver's exposure is at most 3.0,
#    the sender's (ptrace, DAC read, kill) at most 2.5;
#  - no $VARIABLE outside Exec*= lines (systemd expands them nowhere else:
#    ReadWritePaths=${MEMHAUL_IMAGES} was silently ignored);
#  - each agent has its own RuntimeDirectory= (systemd removes it when that
#    unit stops), its --control socket lies in it and is the binary's default;
#  - both are Type=notify; the receiver has no capabilities and is not root;
#  - every variable memhaul.env.example sets is used by a unit, and every
#    variable a unit uses has a default in it;
#  - nothing still names the old shared /run/memhaul/ directory.
# UNITS_DIR=DIR ENV_EXAMPLE=FILE test other copies (e.g. old ones).
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
units=${UNITS_DIR:-$root/deploy/systemd}
env_example=${ENV_EXAMPLE:-$root/deploy/memhaul.env.example}
sender=$units/memhaul-sender.service
receiver=$units/memhaul-receiver.service
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# Values of DIRECTIVE= in a unit (continuation lines joined, comments dropped).
unit_lines() { sed -e ':a' -e '/\\$/{N;s/\\\n//;ba}' "$1" | grep -vE '^[[:space:]]*[#;]'; }
directive() { unit_lines "$1" | sed -n "s/^$2=//p"; }

for u in "$sender" "$receiver"; do
  n=$(basename "$u")
  [[ $(directive "$u" Type) == notify ]] || fail "$n: Type= is not notify"
  # $ outside Exec*= lines (and Environment= defaults) is taken literally by systemd.
  bad=$(unit_lines "$u" | grep -vE '^(Exec[A-Za-z]*|Environment)=' | grep -F '$')
  [[ -z $bad ]] || fail "$n: variables where systemd does not expand them: $bad"
  exec=$(directive "$u" ExecStart)
  rt=$(directive "$u" RuntimeDirectory)
  control=$(sed -n 's/.*--control \([^ ]*\).*/\1/p' <<<"$exec")
  [[ -n $rt && $control == /run/$rt/* ]] || fail "$n: --control '$control' is not inside RuntimeDirectory=$rt"
  # Every $VAR / ${VAR} the unit uses gets a default from Environment=.
  for v in $(grep -oE '\$\{?[A-Z_]+' <<<"$exec" | tr -d '${' | sort -u); do
    directive "$u" Environment | grep -q "^$v=" || fail "$n: \$$v has no Environment= default"
  done
done
[[ $(directive "$sender" RuntimeDirectory) != "$(directive "$receiver" RuntimeDirectory)" ]] \
  || fail "both units share RuntimeDirectory=$(directive "$sender" RuntimeDirectory): stopping one removes the other's socket"

# The binary's defaults are the units' sockets, so `memhaul ctl` finds the agents.
for pair in "senderControl:$sender" "receiverControl:$receiver"; do
  name=${pair%%:*} u=${pair#*:}
  default=$(grep -rhoE "static let $name = \"[^\"]+\"" "$root/Sources" | sed 's/.*"\(.*\)"/\1/')
  control=$(directive "$u" ExecStart | sed -n 's/.*--control \([^ ]*\).*/\1/p')
  [[ -n $default && $default == "$control" ]] || fail "$(basename "$u"): --control $control, but the binary's default ($name) is '$default'"
done

# Receiver: its own user, no capabilities; images in its StateDirectory.
[[ $(directive "$receiver" DynamicUser) == yes || ( -n $(directive "$receiver" User) && $(directive "$receiver" User) != root ) ]] \
  || fail "memhaul-receiver.service runs as root"
grep -qxE 'CapabilityBoundingSet=' <(unit_lines "$receiver") && [[ -z $(directive "$receiver" CapabilityBoundingSet | tr -d ' ') ]] \
  || fail "memhaul-receiver.service keeps capabilities: CapabilityBoundingSet=$(directive "$receiver" CapabilityBoundingSet)"
images=$(directive "$receiver" ExecStart | sed -n 's/.*--images \([^ ]*\).*/\1/p')
[[ $images == /var/lib/$(directive "$receiver" StateDirectory)/* ]] \
  || fail "memhaul-receiver.service: --images '$images' is not inside StateDirectory=$(directive "$receiver" StateDirectory)"

# memhaul.env.example: nothing set that no unit reads.
used=$(cat "$sender" "$receiver")
for v in $(sed -n 's/^\([A-Z_][A-Z0-9_]*\)=.*/\1/p' "$env_example"); do
  grep -qE "\\\$\{?$v\b" <<<"$used" || fail "memhaul.env.example sets $v, which no unit reads"
done

# The old shared runtime directory is gone everywhere.
old=$(grep -rn '/run/memhaul/' "$root/deploy" "$root/README.md" "$root/Protocol" "$root/Sources" "$root/scripts" 2>/dev/null)
[[ -z $old ]] || fail "still names /run/memhaul/: $old"

if ! command -v systemd-analyze >/dev/null; then
  echo "SKIP: systemd-analyze is not installed: verify and security scores not checked (apt-get install systemd)"
else
  # verify also wants ExecStart's program to exist: point it at one that does.
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  for u in "$sender" "$receiver"; do sed 's|^ExecStart=/usr/local/bin/memhaul |ExecStart=/bin/true |' "$u" >"$tmp/$(basename "$u")"; done
  out=$(systemd-analyze verify "$tmp"/memhaul-sender.service "$tmp"/memhaul-receiver.service 2>&1); rc=$?
  [[ $rc -eq 0 && -z $out ]] || fail "systemd-analyze verify (exit $rc): $out"
  for pair in "$receiver:3.0" "$sender:2.5"; do
    u=${pair%:*} limit=${pair##*:}
    line=$(systemd-analyze security --offline=true "$u" 2>&1 | grep 'Overall exposure level')
    score=$(sed -n 's/.*: \([0-9][0-9.]*\) .*/\1/p' <<<"$line")
    echo "$(basename "$u"): exposure ${score:-?} (limit $limit)"
    [[ -n $score ]] && awk -v s="$score" -v l="$limit" 'BEGIN { exit !(s <= l) }' \
      || fail "$(basename "$u"): exposure ${score:-unknown} above $limit: $line"
  done
fi

[[ $fails -eq 0 ]] && echo "systemd units: all passed" || echo "systemd units: $fails failures"
[[ $fails -eq 0 ]]
