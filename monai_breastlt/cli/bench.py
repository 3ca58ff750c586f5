"""``bench speed`` / ``bench synthesis`` / ``bench lt``: benchmarks that print figures against a baseline of the same run."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks that print ratios against a baseline measured in the same run")
    which = p.add_subparsers(dest="which", metavar="which", required=True)

    s = which.add_parser("speed", help="(a) sampler vs WeightedRandomSampler, (b) training and (c) sampling throughput, (d) peak memory, "
                         "(e) overlay masking cost")
    s.add_argument("--parts", nargs="+", default=["sampler", "training", "sampling", "overlays"],
                   choices=["sampler", "training", "sampling", "overlays"])
    s.add_argument("--overlay-sources", type=int, nargs="+", default=[256, 512], help="(e) phantom image sides, preprocessed to 256 px")
    s.add_argument("--overlay-data", default=None, help="(e) also time the first 48 images of this data (folder, CSV or datalist)")
    s.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="(a) dataset sizes")
    s.add_argument("--train-items", type=int, default=2048, help="(b) items per epoch")
    s.add_argument("--train-epochs", type=int, default=3, help="(b) epochs")
    s.add_argument("--schedules", nargs="+", default=["ddim:20", "ddim:50", "ddpm:1000"], help="(c) KIND:STEPS")
    s.add_argument("--batch", type=int, default=4, help="(c) images per sampling batch")
    s.add_argument("--image-size", type=int, default=64, help="(b), (c) image side")
    s.add_argument("--threads", type=int, default=1, help="torch threads (reported)")
    s.set_defaults(func=run_speed)

    s = which.add_parser("synthesis", help="train phase 1 on the phantom and audit the pool (fidelity, Dice, FID)")
    s.add_argument("--out", default="breastlt_bench_synthesis", help="output folder; re-running resumes at the unfinished stage")
    s.add_argument("--profile", default="cpu", choices=["tiny", "cpu", "gpu"], help="epoch budget (cpu: under an hour on 2 cores)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--bundles", default=None, help="folder holding the two bundles (default: next to the package)")
    s.add_argument("--data", default=None, help="train on this data instead of the phantom (split as `bench lt` splits it)")
    s.add_argument("--min-count", type=int, default=0, help="with --data on BUS-BRA: merge classes with fewer images into 'other'")
    s.add_argument("--imbalance-ratio", type=float, default=None, help="with --data: subsample its training split (CIFAR-LT), as bench lt does")
    s.add_argument("--image-size", type=int, default=None, help="image side (default: the profile's)")
    s.add_argument("--target-mode", default="fill", choices=["fill", "up_to", "each"], help="pool size per class")
    s.add_argument("--target-n", type=int, default=None, help="N of up_to / each")
    s.add_argument("--cross-class-sketches", action="store_true",
                   help="also make data/pool_xc with sketches from every class's images, audited and filtered the same way")
    s.add_argument("--min-class-prob", type=float, default=0.5,
                   help="filter: drop images the judges give less than this mean probability of their own class")
    s.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    s.set_defaults(func=run_synthesis)

    from monai_breastlt.bench.long_tail import ARMS, MODIFIERS

    s = which.add_parser("lt", help="every long-tail arm x seeds with one backbone and budget: table, plot, MLflow")
    s.add_argument("--data", required=True, help="datalist JSON, folder with datalist.json, BUS-BRA folder, CSV or ROOT/<class>/")
    s.add_argument("--pool", default=None, help="synthetic pool folder (pool.json, pool_filtered.json) for the syn_* arms")
    s.add_argument("--pool-xc", default=None, help="the pool folder made with cross-class sketches, for +xc arms")
    s.add_argument("--unfiltered", action="store_true", help="synthetic arms read pool.json, not the audit's pool_filtered.json")
    s.add_argument("--out", default="breastlt_bench_lt", help="output folder; re-running skips finished arms/seeds")
    s.add_argument("--arms", nargs="+", default=list(ARMS), metavar="ARM",
                   help=f"arms ({', '.join(ARMS)}), each optionally with additions {''.join('+' + m for m in MODIFIERS)} "
                        "(e.g. syn_rl+freq+smooth+w+crt)")
    s.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1)")
    s.add_argument("--epochs", type=int, default=20)
    s.add_argument("--epoch-size", type=int, default=None, help="samples per epoch of every arm (default: the sampler's own)")
    s.add_argument("--image-size", type=int, default=64)
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--fixed-ratio", type=float, default=0.3, help="synthetic ratio of syn_fixed, start of the adaptive policies")
    s.add_argument("--crt-epochs", type=int, default=None, help="cRT re-training epochs (default: epochs / 4)")
    s.add_argument("--val-every", type=int, default=None,
                   help="validate every N iterations in every arm (the policies act once an epoch, at every validation with +freq)")
    s.add_argument("--ppo-n-steps", type=int, default=4, help="decisions per PPO update of the RL arms")
    s.add_argument("--imbalance-ratio", type=float, default=None, help="subsample the training split to this max/min ratio (CIFAR-LT)")
    s.add_argument("--min-count", type=int, default=0, help="BUS-BRA: merge classes with fewer images into 'other'")
    s.add_argument("--split-seed", type=int, default=0, help="seed of the split and of the subsampling")
    s.add_argument("--test", default=None, help="a further test set (datalist, folder...), scored with every arm's model")
    s.add_argument("--class-map", default=None, help="with --test: JSON mapping its labels onto the training classes / groups")
    s.add_argument("--experiment", default="breastlt_bench_lt", help="MLflow experiment name")
    s.add_argument("--bundles", default=None, help="folder holding the two bundles (default: the package's)")
    s.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    s.set_defaults(func=run_lt)


def run_speed(args: argparse.Namespace) -> int:
    from monai_breastlt.bench.speed import bench_overlays, bench_sampler, bench_sampling, bench_training

    torch.set_num_threads(args.threads)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"torch {torch.__version__}, {device}, {args.threads} thread(s)")
    if "sampler" in args.parts:
        print("\n(a) sampler epoch time, best of 5 epochs")
        print("| items | samples/epoch | AdaptiveRatioSampler (s) | WeightedRandomSampler (s) | ratio |")
        print("|---|---|---|---|---|")
        for r in bench_sampler(args.sizes):
            print(f"| {r['items']} | {r['epoch_samples']} | {r['adaptive_s']:.4f} | {r['weighted_s']:.4f} | {r['ratio']:.2f} |")
    mem = lambda r: f"{r['peak_rss_mb']:.0f}" + (f" / {r['peak_cuda_mb']:.0f}" if "peak_cuda_mb" in r else "")  # noqa: E731
    if "training" in args.parts:
        print(f"\n(b) classifier training, {args.train_items} items x {args.train_epochs} epochs, {args.image_size} px; (d) peak memory")
        print("| pipeline | seconds | samples/s | ratio | peak RSS MB (/ CUDA MB) |")
        print("|---|---|---|---|---|")
        for r in bench_training(args.train_items, args.train_epochs, args.image_size, threads=args.threads):
            print(f"| {r['pipeline']} | {r['seconds']:.1f} | {r['samples_per_s']:.1f} | {r['ratio']:.3f} | {mem(r)} |")
    if "sampling" in args.parts:
        schedules = [(k, int(n)) for k, n in (x.split(":") for x in args.schedules)]
        print(f"\n(c) sampling, batch {args.batch}, {args.image_size} px, CFG 2 + ControlNet, bundle-default LDM; (d) peak memory")
        print("| schedule | implementation | seconds | images/s | ratio | peak RSS MB (/ CUDA MB) |")
        print("|---|---|---|---|---|---|")
        for r in bench_sampling(schedules, args.batch, args.image_size, threads=args.threads):
            print(f"| {r['sampler']} | {r['impl']} | {r['seconds']:.2f} | {r['images_per_s']:.3f} | {r['ratio']:.3f} | {mem(r)} |")
    if "overlays" in args.parts:
        print("\n(e) preprocessing to 256 px per image, without and with the overlay masking transform (same run, least of 5 per image)")
        print("and the detector against the phantom's exact overlay pixels (images with marks: pixels found, pixels right; images flagged)")
        print("| source px | images | preprocessing (ms) | + overlay masking (ms) | overhead "
              "| overlay pixels found | found pixels right | marked images flagged | clean images flagged |")
        print("|---|---|---|---|---|---|---|---|---|")
        pct = lambda r, k: f"{100 * r[k]:.1f} %" if k in r else "-"  # noqa: E731
        for r in bench_overlays(256, args.overlay_sources, data=args.overlay_data):
            print(f"| {r['source_px']} | {r['images']} | {r['plain_ms']:.2f} | {r['masked_ms']:.2f} | {100 * r['overhead']:.0f} % "
                  f"| {pct(r, 'pixel_recall')} | {pct(r, 'pixel_precision')} | {pct(r, 'flagged_marked')} | {pct(r, 'flagged_clean')} |")
    return 0


def run_synthesis(args: argparse.Namespace) -> int:
    from monai_breastlt.bench.synthesis import benchmark_synthesis, format_synthesis_report

    if args.threads:
        torch.set_num_threads(args.threads)
    report = benchmark_synthesis(args.out, args.profile, args.seed, args.bundles, data_source=args.data, min_count=args.min_count,
                                 imbalance_ratio=args.imbalance_ratio,
                                 image_size=args.image_size, target_mode=args.target_mode, target_n=args.target_n,
                                 cross_class_sketches=args.cross_class_sketches, min_class_prob=args.min_class_prob)
    print(format_synthesis_report(report))
    return 0


def run_lt(args: argparse.Namespace) -> int:
    from monai_breastlt.bench.long_tail import LongTailBenchmark, arm_options, prepare_external_test
    from monai_breastlt.data import load_datalist_file, prepare_benchmark_data

    for arm in args.arms:  # every name checked before any data is prepared
        arm_options(arm)
    if bool(args.test) != bool(args.class_map):
        raise ValueError("--test and --class-map go together: the class map says which training class each test label is.")
    if args.threads:
        torch.set_num_threads(args.threads)
    datalist = prepare_benchmark_data(args.data, args.out, args.imbalance_ratio, args.min_count, seed=args.split_seed)
    tests = {}
    if args.test:
        name = Path(args.test).stem if Path(args.test).suffix else Path(args.test).name
        prepare_external_test(args.test, args.class_map, load_datalist_file(datalist)["classes"], Path(args.out) / "external" / name)
        tests[name] = Path(args.out) / "external" / name
    bench = LongTailBenchmark(
        datalist, args.out, args.pool, args.arms, list(range(args.seeds)), args.epochs, args.epoch_size, args.image_size,
        args.batch_size, args.fixed_ratio, args.crt_epochs, ppo_n_steps=args.ppo_n_steps, val_every=args.val_every,
        pool_xc=args.pool_xc, unfiltered=args.unfiltered, test_sets=tests, experiment=args.experiment, bundles_dir=args.bundles,
    )
    bench.run()
    print((bench.out / "results.md").read_text())
    print(f"tables: {bench.out / 'results.md'}, {bench.out / 'results.csv'}, {bench.out / 'runs.csv'}; plot: {bench.out / 'results.png'}")
    print(f"MLflow : mlflow ui --backend-store-uri {bench.tracking_uri}")
    return 0
