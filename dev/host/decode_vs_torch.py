#!/usr/bin/env python3
"""halfkern's decode-shaped bf16 GEMM against torch's F.linear on the same
host, in one run.

Usage (on the Intel host, from the repo root, with a gemm_speed binary built
on the dev machine and carried along):

    python3 dev/host/decode_vs_torch.py carry/gemm_speed [--isa amx] [--threads 1,16] \
        [--ms 1,2,4,8,16] [--nk 4096,4096] [--forms packed,nk,row]

torch computes `F.linear(x, W)` with x `m x k` and W `n x k` in bf16 (its
Linear layout; bf16 out). halfkern computes the same product as
`gemm(x, B)` with B given as `--forms`: `nk` is W itself seen as `W^T`
(no copy, what an engine with torch-layout weights passes), `packed` is B
packed once beforehand (`PackedB`, as for weights loaded once), `row` is a
row-major `k x n` B. bf16 C on both sides. Each row alternates the two
sides `--rounds` times: on one thread both are pinned to one CPU and
alternate call by call (gemm_speed --serve); on more threads process by
process. Prints a Markdown table: GB/s of weights streamed (2 n k bytes per
call) and GFLOP/s, medians over rounds, and the ratio with each round's.

The weights are one matrix reused call after call on both sides: with
n = k = 4096 (32 MiB) it stays in this host's L3, so these are L3-speed
figures for both.
"""
import argparse
import json
import os
import statistics
import subprocess
import time

from amx_ab import pick_cpu


def torch_linear(m, n, k, threads, reps):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(m * 7 + n)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
    w = torch.randn(n, k, generator=g).to(torch.bfloat16)
    for _ in range(5):
        F.linear(x, w)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        F.linear(x, w)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def halfkern_secs(binary, isa, m, n, k, form, threads, reps):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), HALFKERN_ISA=isa)
    out = subprocess.run(
        [binary, "--m", str(m), "--n", str(n), "--k", str(k), "--b", form,
         "--threads", str(threads), "--reps", str(reps), "--json", "--out", "bf16"],
        env=env, capture_output=True, text=True, check=True,
    )
    row = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")][-1]
    return 2 * m * n * k / (row["gflops"] * 1e9), row["kernel"]


def one_thread(binary, isa, m, n, k, form, reps, cpu):
    """(torch secs, halfkern secs, kernel): medians of single calls
    alternated one by one, both pinned to `cpu`."""
    import torch
    import torch.nn.functional as F

    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(m * 7 + n)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
    w = torch.randn(n, k, generator=g).to(torch.bfloat16)
    for _ in range(5):
        F.linear(x, w)
    env = dict(os.environ, RAYON_NUM_THREADS="1", HALFKERN_ISA=isa)
    # The kernel's name, from one timed run.
    _, kernel = halfkern_secs(binary, isa, m, n, k, form, 1, 3)
    proc = subprocess.Popen(
        [binary, "--m", str(m), "--n", str(n), "--k", str(k), "--b", form,
         "--threads", "1", "--serve", "--out", "bf16"],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
    )
    assert proc.stdout.readline().strip() == "ready"
    ts, hs = [], []
    for _ in range(reps):
        t = time.perf_counter()
        F.linear(x, w)
        ts.append(time.perf_counter() - t)
        proc.stdin.write("\n")
        proc.stdin.flush()
        hs.append(float(proc.stdout.readline()))
    proc.stdin.close()
    proc.wait()
    os.sched_setaffinity(0, cpus)
    return statistics.median(ts), statistics.median(hs), kernel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--isa", default="amx")
    ap.add_argument("--threads", default="1,16")
    ap.add_argument("--ms", default="1,2,4,8,16")
    ap.add_argument("--nk", default="4096,4096", help="n,k")
    ap.add_argument("--forms", default="packed,nk")
    ap.add_argument("--cpu", default="last")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    import torch

    n, k = (int(v) for v in args.nk.split(","))
    print(f"torch {torch.__version__}, {os.cpu_count()} cpus; n = {n}, k = {k}, bf16 in and out")
    print("| threads | m | B | torch GB/s (GFLOP/s) | halfkern GB/s (GFLOP/s) | kernel "
          "| ratio | per-round |")
    print("|---|---|---|---|---|---|---|---|")
    for threads in [int(t) for t in args.threads.split(",")]:
        for m in [int(v) for v in args.ms.split(",")]:
            for form in args.forms.split(","):
                ts, hs, kernel = [], [], "?"
                for _ in range(args.rounds):
                    if threads == 1:
                        t, h, kernel = one_thread(args.binary, args.isa, m, n, k, form,
                                                  args.reps, pick_cpu(args.cpu))
                    else:
                        t = torch_linear(m, n, k, threads, args.reps)
                        h, kernel = halfkern_secs(args.binary, args.isa, m, n, k, form,
                                                  threads, args.reps)
                    ts.append(t)
                    hs.append(h)
                t, h = statistics.median(ts), statistics.median(hs)
                gb = lambda s: 2 * n * k / s / 1e9
                gf = lambda s: 2 * m * n * k / s / 1e9
                per = " ".join(f"{a / b:.2f}" for a, b in zip(ts, hs))
                print(f"| {threads} | {m} | {form} | {gb(t):.1f} ({gf(t):.0f}) "
                      f"| {gb(h):.1f} ({gf(h):.0f}) | {kernel} | {t / h:.2f}x | {per} |",
                      flush=True)


if __name__ == "__main__":
    main()
