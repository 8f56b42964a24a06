#!/bin/bash
# Builds of gemm_speed against each other on the host, alternated in one
# call: every case runs each binary once per round, and the line shows the
# kernel and GFLOP/s of each, round by round (the host drifts 15% or more
# between calls, so only numbers from one line compare).
#
#   bash dev/host/ab.sh DIR ROUNDS "BIN BIN .." < cases
#
# where DIR holds the binaries (built here, stripped, carried) and each
# line of stdin is "label | isa | gemm_speed arguments".
set -u
dir=$(realpath "${1:?usage: ab.sh DIR ROUNDS \"BIN ..\" < cases}")
rounds=${2:?rounds}
bins=${3:?binaries}
one() { # isa bin args...
  local isa=$1 bin=$2; shift 2
  HALFKERN_ISA=$isa timeout 30 "$dir/$bin" "$@" --json 2>/dev/null |
    python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print(d['kernel'][:12], round(d['gflops'],1))" 2>/dev/null
}
while IFS='|' read -r label isa args; do
  [ -z "$label" ] && continue
  isa=$(echo $isa)
  line="$label:"
  for ((r = 1; r <= rounds; r++)); do
    for bin in $bins; do
      # shellcheck disable=SC2086
      line="$line | $bin $(one "$isa" "$bin" $args)"
    done
    line="$line ||"
  done
  echo "$line"
done
