#!/bin/bash
# Runs halfkern's test binaries on a machine without a Rust toolchain (the
# lent Intel host), once per ISA, with the AMX ISA required to be present.
#
# Build and collect them here (stripped, they fit the device carry limit):
#   cargo test --release --no-run --message-format=json \
#     | python3 -c 'import sys,json,shutil
#   for l in sys.stdin:
#       m = json.loads(l)
#       if m.get("executable") and m["profile"]["test"] and m["target"]["kind"][0] in ("lib", "test"):
#           shutil.copy(m["executable"], "carry/amx/" + m["target"]["name"])'
#   strip carry/amx/*
# then, there: bash dev/host/host_tests.sh carry/amx
set -u
dir=${1:?usage: host_tests.sh DIR_WITH_TEST_BINARIES}
out=$(mktemp -d)
export HALFKERN_REQUIRE=amx
for isa in amx avx512bf16 avx512; do
  for t in halfkern train finite train_example gemm fp_env; do
    HALFKERN_ISA=$isa timeout 240 "$dir/$t" -q > "$out/${t}_$isa.log" 2>&1 &
  done
done
wait
# The exhaustive 2^32 conversion sweep once in full; sampled for the others.
HALFKERN_ISA=amx timeout 240 "$dir/convert" -q > "$out/convert_amx.log" 2>&1 &
for isa in avx512bf16 avx512; do
  HALFKERN_TEST_STRIDE=97 HALFKERN_ISA=$isa timeout 240 "$dir/convert" -q > "$out/convert_$isa.log" 2>&1 &
done
wait
status=0
for f in "$out"/*.log; do
  echo "$(basename "$f" .log): $(grep -E 'test result' "$f" | tr '\n' ' ')"
  if grep -qE "FAILED|panicked" "$f" || ! grep -q "test result: ok" "$f"; then
    grep -E "FAILED|panicked" "$f" | head -5
    status=1
  fi
done
exit $status
