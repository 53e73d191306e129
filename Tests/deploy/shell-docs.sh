#!/usr/bin/env bash
# scripts/shell-docs: the bash and zsh completion scripts and the man page are
# produced from the built memhaul; the bash completion completes subcommands;
# the man page renders and names every subcommand (from memhaul's own command
# tree, --experimental-dump-help). MEMHAUL_BUILD_CONFIG as for scripts/setup
# (default here: debug, the build scripts/test makes).
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
export MEMHAUL_BUILD_CONFIG=${MEMHAUL_BUILD_CONFIG:-debug}
command -v jq >/dev/null || { echo "SKIP: jq is not installed"; exit 0; }
work=$(mktemp -d /tmp/memhaul-shell-docs-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
pass() { echo "ok: $*"; }

"$root/scripts/shell-docs" "$work/out" || { echo "FAIL: scripts/shell-docs"; exit 1; }
for f in memhaul.bash _memhaul memhaul.1; do
  [[ -s $work/out/$f ]] && pass "$f produced" || fail "$f missing or empty"
done

bash -n "$work/out/memhaul.bash" && pass "bash completion parses" || fail "bash completion does not parse"
if command -v zsh >/dev/null; then zsh -n "$work/out/_memhaul" && pass "zsh completion parses" || fail "zsh completion does not parse"; fi
# Complete `memhaul mig<TAB>` with the generated function.
got=$(bash -c 'source "$1"; COMP_WORDS=(memhaul mig); COMP_CWORD=1; COMP_LINE="memhaul mig"; COMP_POINT=${#COMP_LINE}; _memhaul memhaul mig memhaul; printf "%s\n" "${COMPREPLY[@]}"' _ "$work/out/memhaul.bash" 2>/dev/null)
grep -qx migrate <<<"$got" && pass "bash completes mig to migrate" || fail "bash completion of 'mig': $got"

bin="$(cd "$root" && swift build -c "$MEMHAUL_BUILD_CONFIG" --show-bin-path)/memhaul"
# Every subcommand, at every depth, as "parent child" paths.
subcommands=$("$bin" --experimental-dump-help | jq -r '.command | recurse(.subcommands[]?) | .commandName' | sort -u)
[[ $(wc -l <<<"$subcommands") -ge 10 ]] || fail "too few subcommands from --experimental-dump-help: $subcommands"
page=$(MANWIDTH=200 man -l "$work/out/memhaul.1" 2>/dev/null)
[[ -n $page ]] && pass "man page renders" || fail "man -l renders nothing"
missing=()
for c in $subcommands; do grep -qw -- "$c" <<<"$page" || missing+=("$c"); done
((${#missing[@]} == 0)) && pass "man page names all $(wc -l <<<"$subcommands") subcommands" || fail "man page lacks: ${missing[*]}"
grep -q "Exit status: 0 the agent answered ok" <<<"$page" && pass "man page carries ctl's exit statuses" || fail "ctl exit statuses not in the man page"

echo "shell-docs: $fails failed"
((fails == 0))
