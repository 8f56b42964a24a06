#!/bin/bash
# Every host measurement of the AMX issue, then the suite, in one device
# call (a start costs minutes of the session's device time, and starts are
# refused for ~10-minute windows, so batch):
#
#   1. decode against F.linear, 1 and 16 threads, m = 1..16, Linear-layout
#      (nk) and PackedB weights;
#   2. the transformer shapes on 16 threads: m = 2048 with (n, k) =
#      (4096, 4096), (11008, 4096), (4096, 11008), B row-major, packed and nk;
#   3. square bf16 GEMM at n = 512, 1024, 2048 on 16 and 1 threads;
#   4. the whole suite under amx, avx512bf16 and avx512 (host_tests.sh).
#
# Build here (see host_tests.sh for the test binaries, into carry/amx), then
#   cargo build --release --example gemm_speed && cp target/release/examples/gemm_speed carry/ && strip carry/gemm_speed
# and run, from the repository root on the host, with carry ["carry"]:
#   bash dev/host/run_all.sh carry
# About 7 minutes; each part has its own timeout so a slow one cannot
# take the others' output with it.
set -u
dir=$(realpath "${1:?usage: run_all.sh DIR_WITH_gemm_speed_AND_amx}")
lscpu | grep -E "Model name"; nproc; date
cd "$(dirname "$0")"
echo "=== decode vs F.linear"
timeout 100 python3 decode_vs_torch.py "$dir/gemm_speed" --threads 1,16 --ms 1,2,4,8,16 \
  --forms nk,packed --rounds 2 --reps 10 2>&1 | tail -24
echo "=== transformer shapes, 16 threads"
for nk in 4096,4096 11008,4096 4096,11008; do
  timeout 40 python3 decode_vs_torch.py "$dir/gemm_speed" --threads 16 --ms 2048 --nk "$nk" \
    --forms row,packed,nk --rounds 1 --reps 5 2>&1 | tail -4
done
echo "=== square"
timeout 60 python3 amx_vs_torch.py "$dir/gemm_speed" --threads 16,1 --sizes 512,1024,2048 \
  --rounds 1 2>&1 | tail -10
echo "=== the suite on amx, avx512bf16, avx512"
timeout 200 bash host_tests.sh "$dir/amx" 2>&1 | tail -25
