#!/bin/bash
# A short host call after a change (under 4 minutes): the suite, then an
# older gemm_speed (gs_old, 1ceca68) against the new one on the rows the
# sixth and seventh sessions' changes touch (16-thread square with the
# pool and the grid reverted; PackedB decode with the pair stream for
# m <= 2 and AMX tiles from 3), then torch on the same rows.
#
# Build here: the test binaries into DIR/amx and gemm_speed into DIR (see
# run_all.sh), the older library's gemm_speed as DIR/gs_old (a git
# worktree at the older commit), strip them all; there, with carry [DIR]:
#   bash dev/host/after_change.sh DIR
set -u
dir=$(realpath "${1:?usage: after_change.sh DIR}")
host=$(realpath "$(dirname "$0")")
cd "$dir"
lscpu | grep "Model name"; date
echo "=== suite"
timeout 100 bash "$host/host_tests.sh" "$dir/amx" 2>&1 | tail -22
one() { # isa bin args...
  local isa=$1 bin=$2; shift 2
  HALFKERN_ISA=$isa timeout 20 ./$bin "$@" --json 2>/dev/null | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print(d['kernel'][:10], round(d['gflops'],1))" 2>/dev/null
}
ab() { # label isa args...
  local label=$1 isa=$2; shift 2
  local line="$label:"
  for r in 1 2; do for bin in gs_old gemm_speed; do line="$line | ${bin:0:6} $(one $isa $bin "$@")"; done; done
  echo "$line"
}
echo "=== A/B"
for n in 512 1024; do ab "square bf16 n=$n T16" amx --n $n --threads 16 --reps 60 --out bf16; done
for t in 1 16; do for m in 1 2 4 8; do ab "decode m=$m packed T$t" amx --m $m --n 4096 --k 4096 --b packed --threads $t --reps 20; done; done
# The dynamic split with the pool's caller share (0.84-0.99x in the sixth
# session's one call, inside the host's drift or not: to be settled).
ab "m=2048 4096^2 packed T16" amx --m 2048 --n 4096 --k 4096 --b packed --threads 16 --reps 5 --out bf16
echo "=== torch"
timeout 40 python3 "$host/amx_vs_torch.py" "$dir/gemm_speed" --threads 16 --sizes 512,1024 --rounds 1 2>&1 | tail -4
timeout 50 python3 "$host/decode_vs_torch.py" "$dir/gemm_speed" --threads 1,16 --ms 1,2,4,8 --forms packed,nk --rounds 1 --reps 10 2>&1 | tail -10
