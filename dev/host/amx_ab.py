#!/usr/bin/env python3
"""A/B of several gemm_speed builds (and torch) on the lent Intel host.

Usage (there, from the repo root, with the builds carried along):

    python3 dev/host/amx_ab.py carry/gs_new,carry/gs_old --sizes 2048 --threads 1 --reps 15

One thread: every build runs as a `gemm_speed --serve` process, all of them
and torch pinned to one CPU, and single calls alternate torch, build 1,
build 2, ... `--reps` times, so the host's fast and slow phases (up to 3x
apart within a second) fall on all sides alike. More threads: the builds
alternate process by process `--reps` times (gemm_speed's own median of 20
calls each). Prints each side's median GFLOP/s, then its speed relative to
the first build as the median over rounds of the two sides' ratio in the
same round (the host's speed moves from second to second, so rounds differ),
and in how many rounds it was the faster. bf16 inputs and C, square n,
row-major, packing included.
"""
import argparse
import json
import os
import statistics
import subprocess
import time


def fastest_cpu(n=1024, calls=3):
    """The CPU where torch's one-thread bf16 matmul runs fastest now (a
    neutral pick: torch's speed, not a build's)."""
    import torch

    torch.set_num_threads(1)
    a = torch.randn(n, n).to(torch.bfloat16)
    cpus = os.sched_getaffinity(0)
    best = (float("inf"), max(cpus))
    for cpu in sorted(cpus):
        os.sched_setaffinity(0, {cpu})
        torch.matmul(a, a)
        t = time.perf_counter()
        for _ in range(calls):
            torch.matmul(a, a)
        best = min(best, (time.perf_counter() - t, cpu))
    os.sched_setaffinity(0, cpus)
    return best[1]


def pick_cpu(spec):
    """The CPU named by a `--cpu` value: 'last', 'fastest' or a number."""
    if spec == "last":
        return max(os.sched_getaffinity(0))
    if spec == "fastest":
        return fastest_cpu()
    return int(spec)


def one_thread(bins, n, reps, isa, cpu):
    """Seconds per call, per side, single calls alternated on one CPU."""
    import torch

    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})  # the children inherit it
    torch.set_num_threads(1)
    a = torch.randn(n, n).to(torch.bfloat16)
    b = torch.randn(n, n).to(torch.bfloat16)
    for _ in range(3):
        torch.matmul(a, b)
    env = dict(os.environ, RAYON_NUM_THREADS="1", HALFKERN_ISA=isa)
    procs = []
    for binary in bins:
        p = subprocess.Popen(
            [binary, "--n", str(n), "--threads", "1", "--serve", "--out", "bf16"],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        assert p.stdout.readline().strip() == "ready"
        procs.append(p)
    times = {side: [] for side in ["torch"] + bins}
    sides = list(zip(bins, procs))
    for r in range(reps):
        t = time.perf_counter()
        torch.matmul(a, b)
        times["torch"].append(time.perf_counter() - t)
        # A different build first each round: no side always follows torch.
        for binary, p in sides[r % len(sides):] + sides[:r % len(sides)]:
            p.stdin.write("\n")
            p.stdin.flush()
            times[binary].append(float(p.stdout.readline()))
    for p in procs:
        p.stdin.close()
        p.wait()
    os.sched_setaffinity(0, cpus)
    return times


def many_threads(bins, n, threads, reps, isa):
    """Seconds per call (each run's median), per build, runs alternated."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), HALFKERN_ISA=isa)
    times = {binary: [] for binary in bins}
    for r in range(reps):
        for binary in bins[r % len(bins):] + bins[:r % len(bins)]:
            out = subprocess.run(
                [binary, "--n", str(n), "--threads", str(threads), "--reps", "20", "--json",
                 "--out", "bf16"],
                env=env, capture_output=True, text=True, check=True,
            ).stdout
            gflops = json.loads(out.strip().splitlines()[-1])["gflops"]
            times[binary].append(2 * n**3 / gflops / 1e9)
    return times


def label(side):
    """A build's name: its file name, or its folder's where builds share one."""
    if side == "torch":
        return side
    head, name = os.path.split(side)
    return os.path.basename(head) if name == "gemm_speed" and head else name


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binaries", help="comma-separated gemm_speed builds; the first is the base")
    ap.add_argument("--sizes", default="2048")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--isa", default="amx")
    ap.add_argument("--cpu", default="last",
                    help="one thread: the CPU to pin to, 'last' or 'fastest' (torch's, now)")
    args = ap.parse_args()
    if args.threads == 1:
        cpu = pick_cpu(args.cpu)
        print(f"one thread, pinned to CPU {cpu}", flush=True)
    bins = args.binaries.split(",")
    if len(set(bins)) != len(bins):
        ap.error("name each build once")
    for n in [int(s) for s in args.sizes.split(",")]:
        if args.threads == 1:
            times = one_thread(bins, n, args.reps, args.isa, cpu)
        else:
            times = many_threads(bins, n, args.threads, args.reps, args.isa)
        base = times[bins[0]]

        def paired(t):
            """The median over rounds of the base's time over this side's in
            the same round, and in how many rounds this side was faster."""
            ratios = [b / x for b, x in zip(base, t)]
            return statistics.median(ratios), sum(r > 1 for r in ratios)

        cols = "  ".join(
            f"{label(side)} {2 * n**3 / statistics.median(t) / 1e9:.0f} "
            f"({paired(t)[0]:.2f}x, {paired(t)[1]}/{len(t)})"
            for side, t in times.items()
        )
        print(f"n={n} threads={args.threads}: {cols}", flush=True)


if __name__ == "__main__":
    main()
