#!/usr/bin/env python3
"""halfkern's bf16 GEMM against torch.matmul (oneDNN) on the same host, in one run.

Usage (on the Intel host, from the repo root, with a gemm_speed binary built
on the dev machine and carried along):

    python3 dev/host/amx_vs_torch.py carry/gemm_speed [--isa amx] [--threads 1,16] [--out bf16]

Both sides compute C = A[bf16] @ B[bf16] for square n, row-major inputs, with
f32 accumulation and C in bf16 (what torch.matmul returns for bf16 inputs;
`--out f32` gives halfkern an f32 C instead, twice the bytes to store),
packing included, and report the median of timed repetitions after
warm-up, alternating the two sides --rounds times per row (the medians over
rounds are reported, with each round's ratio beside them). Prints a Markdown
table (GFLOP/s and the ratio halfkern / torch).

On one thread both sides run pinned to the same CPU and alternate call by
call (halfkern's binary runs with --serve and times one call per line it
reads): the lent host's one-core speed differs up to 3x between its CPUs
and from one second to the next, which unpinned process-by-process
alternation turned into per-round ratios from 0.4 to 2.3. `--cpu fastest`
pins each round to the CPU where torch alone runs fastest just before it
(a pick by torch's speed, not halfkern's): in a CPU's slow phase both sides
run at about a third of their speed and level with each other.
With more threads they alternate process by process: torch's OpenMP workers
keep spinning after a call and would take the cores from halfkern's.
"""
import argparse
import json
import os
import statistics
import subprocess
import time

from amx_ab import pick_cpu


def torch_gflops(n, threads, reps):
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(n)
    a = torch.randn(n, n, generator=g).to(torch.bfloat16)
    b = torch.randn(n, n, generator=g).to(torch.bfloat16)
    for _ in range(3):
        torch.matmul(a, b)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def interleaved_gflops(binary, isa, n, reps, out, cpu):
    """One thread: (torch, halfkern) GFLOP/s, medians of `reps` single calls
    alternated one by one, both pinned to `cpu`."""
    import torch

    # One CPU for both sides (the child inherits the affinity).
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(n)
    a = torch.randn(n, n, generator=g).to(torch.bfloat16)
    b = torch.randn(n, n, generator=g).to(torch.bfloat16)
    for _ in range(3):
        torch.matmul(a, b)
    env = dict(os.environ, RAYON_NUM_THREADS="1", HALFKERN_ISA=isa)
    proc = subprocess.Popen(
        [binary, "--n", str(n), "--threads", "1", "--serve", "--out", out],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
    )
    assert proc.stdout.readline().strip() == "ready"
    ts, hs = [], []
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(a, b)
        ts.append(time.perf_counter() - t)
        proc.stdin.write("\n")
        proc.stdin.flush()
        hs.append(float(proc.stdout.readline()))
    proc.stdin.close()
    proc.wait()
    os.sched_setaffinity(0, cpus)
    flops = 2 * n**3 / 1e9
    return flops / statistics.median(ts), flops / statistics.median(hs)


def halfkern_gflops(binary, isa, n, threads, reps, out):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), HALFKERN_ISA=isa)
    out = subprocess.run(
        [binary, "--n", str(n), "--threads", str(threads), "--reps", str(reps), "--json",
         "--out", out],
        env=env, capture_output=True, text=True, check=True,
    )
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return rows[-1]["gflops"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--isa", default="amx")
    ap.add_argument("--threads", default="1,16")
    ap.add_argument("--sizes", default="512,1024,2048,4096")
    ap.add_argument("--out", default="bf16", choices=["bf16", "f32"],
                    help="halfkern's C type (torch's is bf16)")
    ap.add_argument("--cpu", default="last",
                    help="one thread: the CPU both sides are pinned to: 'last', a number, or "
                         "'fastest' (where torch runs fastest, probed before each round)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternate torch and halfkern this many times per row; "
                         "each side's figure is the median over rounds")
    args = ap.parse_args()
    import torch

    print(f"torch {torch.__version__}, oneDNN {torch.backends.mkldnn.is_available()}, "
          f"{os.cpu_count()} cpus")
    print(f"| threads | n | torch bf16 GFLOP/s | halfkern {args.isa} ({args.out} C) GFLOP/s | ratio "
          f"| per-round ratios |")
    print("|---|---|---|---|---|---|")
    for threads in [int(t) for t in args.threads.split(",")]:
        for n in [int(s) for s in args.sizes.split(",")]:
            reps = max(5, min(50, int(2e11 / (2 * n**3) * threads)))
            # Alternating the two sides spreads the host's slow and fast
            # phases (it is shared and virtualised) over both.
            ts, hs = [], []
            for _ in range(args.rounds):
                if threads == 1:
                    cpu = pick_cpu(args.cpu)
                    t, h = interleaved_gflops(args.binary, args.isa, n, reps, args.out, cpu)
                    ts.append(t)
                    hs.append(h)
                else:
                    ts.append(torch_gflops(n, threads, reps))
                    hs.append(halfkern_gflops(args.binary, args.isa, n, threads, reps, args.out))
            t, h = statistics.median(ts), statistics.median(hs)
            per_round = " ".join(f"{b / a:.2f}" for a, b in zip(ts, hs))
            print(f"| {threads} | {n} | {t:.0f} | {h:.0f} | {h / t:.2f}x | {per_round} |",
                  flush=True)


if __name__ == "__main__":
    main()
