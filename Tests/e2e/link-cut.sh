#!/usr/bin/env bash
# Fault matrix: the link between the hosts is cut mid-round (`ip link set
# down` on host A's veth), then brought back. Two cuts:
#   short  1 s, under the agents' --peer-timeout: TCP may ride it out, or the
#          sender resumes;
#   long   8 s, over --peer-timeout 3: the sender's blocked send fails with
#          ETIMEDOUT (TCP_USER_TIMEOUT), it reconnects with backoff until the
#          link is back, the receiver cuts the stale connection and reopens
#          the image at its last committed round, and only the delta travels.
# Each run must complete with an image equal byte for byte to the frozen source;
# the long cut must show a resume and re-send well under the memory size.
# Driven through deploy/memhaul-orchestrate, like production.
#
#   Tests/e2e/link-cut.sh      (needs root)
work_prefix=memhaul-cut
source "$(dirname "$0")/two-hosts.bash"
size_mb=192
two_hosts_up 200mbit --peer-timeout 3

passed=0
# cut NAME SECONDS MIN_RESUMES
cut() {
  local name=$1 seconds=$2 min_resumes=$3 id=cut-$1
  ip netns exec $A "$bin/memhaul-workload" --size ${size_mb}M --mix zero=20,text=40,random=40 \
    --threads 1 --rate 2000 --pattern hot:0.2 --exit-after 600 >"$work/$name-workload.out" 2>"$work/$name-workload.log" &
  local workload=$!
  pids+=($workload)
  for _ in $(seq 1 400); do grep -q ready "$work/$name-workload.out" 2>/dev/null && break; sleep 0.05; done
  grep -q ready "$work/$name-workload.out" || fail "$name: workload did not start"

  "$root/deploy/memhaul-orchestrate" --pid "$workload" --to 10.77.0.2:7070 --id "$id" \
    --sender-ctl "env MEMHAUL_CONTROL=$work/sender.sock $memhaul ctl" \
    --receiver-ctl "env MEMHAUL_CONTROL=$work/receiver.sock $memhaul ctl" \
    --downtime-limit 500 --resume-timeout 60 --after stop --timeout 300 \
    >"$work/$name-result.json" 2>"$work/$name-orchestrate.log" &
  local orchestrate=$!

  # Cut mid-round 0, once the receiver has committed its first chunk (64 MiB).
  local got=0 committed=null
  for _ in $(seq 1 1200); do
    st=$(rctl status 2>/dev/null) || { sleep 0.05; continue; }
    got=$(jq -r --arg id "$id" '[.result.sessions[]? | select(.migration == $id)] | last | .bytes // 0' <<<"$st")
    committed=$(jq -r --arg id "$id" '[.result.sessions[]? | select(.migration == $id)] | last | .committed_round // null' <<<"$st")
    [[ $committed != null ]] && (( committed >= 1 )) && break
    sleep 0.05
  done
  [[ $committed != null ]] || fail "$name: round 0 did not get going (receiver has $got bytes)"
  local sender_round
  sender_round=$(sctl status --migration "$id" | jq -r '.result.status | "\(.stage) \(.counters.round)"')
  ip -n $A link set "${A:0:12}-v" down
  echo "link down for ${seconds}s: receiver has $got wire bytes, committed chunk $committed$( [[ $sender_round == "precopy 0" ]] && echo ', round 0 still streaming')"
  sleep "$seconds"   # the fault itself: how long the link stays down
  ip -n $A link set "${A:0:12}-v" up

  wait "$orchestrate" || fail "$name: orchestration failed: $(cat "$work/$name-result.json")"
  local result; result=$(cat "$work/$name-result.json")
  [[ $(jq -r .state <<<"$result") == completed ]] || fail "$name: state $(jq -r .state <<<"$result")"
  [[ $(awk '{print $3}' /proc/$workload/stat) == T ]] || fail "$name: source not frozen"
  "$memhaul" image verify "$work/images/$id" --pid "$workload" >"$work/$name-verify.log" \
    || fail "$name: image verify: $(cat "$work/$name-verify.log")"
  local resumes resent
  resumes=$(jq -r '.resumes // 0' <<<"$result")
  resent=$(jq -r '.resent_bytes_after_resume // 0' <<<"$result")
  (( resumes >= min_resumes )) || fail "$name: $resumes resumes, expected at least $min_resumes"
  (( resent < size_mb * 1048576 / 2 )) || fail "$name: re-sent $resent bytes after resuming, half the memory or more"
  printf 'link cut %s (%s s): completed, verified, rounds %s, resumes %s, %s wire bytes lost in flight and sent again (memory %s MiB), total %.0f ms, downtime %.1f ms\n' \
    "$name" "$seconds" "$(jq -r .rounds <<<"$result")" "$resumes" "$resent" "$size_mb" \
    "$(jq -r .total_time_ms <<<"$result")" "$(jq -r .downtime_ms <<<"$result")"
  kill -KILL "$workload" 2>/dev/null || true
  wait "$workload" 2>/dev/null || true
  passed=$((passed + 1))
}

cut short 1 0
cut long 8 1
grep -q "cut\|resumes at committed round" "$work/receiver.log" && grep "resumes at committed round" "$work/receiver.log" | tail -1
echo "$passed passed, 0 failed"
