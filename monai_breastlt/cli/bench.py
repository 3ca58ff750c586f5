"""``bench speed``: sampler timing against torch's WeightedRandomSampler."""

from __future__ import annotations

import argparse

import torch


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks that print ratios against a baseline measured in the same run")
    p.add_argument("which", choices=["speed"], help="speed: sampler epoch time / WeightedRandomSampler")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--threads", type=int, default=1, help="torch threads (reported)")
    p.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from monai_breastlt.bench.speed import bench_sampler

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s); best of 5 epochs")
    print("| items | samples/epoch | AdaptiveRatioSampler (s) | WeightedRandomSampler (s) | ratio |")
    print("|---|---|---|---|---|")
    for r in bench_sampler(args.sizes):
        print(f"| {r['items']} | {r['epoch_samples']} | {r['adaptive_s']:.4f} | {r['weighted_s']:.4f} | {r['ratio']:.2f} |")
    return 0
