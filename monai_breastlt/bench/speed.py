"""Speed benchmarks that print ratios against a baseline measured in the same run."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

from monai_breastlt.data.sampler import AdaptiveRatioSampler

__all__ = ["bench_overlays", "bench_sampler", "bench_sampling", "bench_training", "peak_rss_mb"]


def _best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_sampler(sizes: Sequence[int] = (10_000, 100_000, 1_000_000), num_classes: int = 20, repeats: int = 5, seed: int = 0) -> list[dict]:
    """Time one full epoch of ``AdaptiveRatioSampler`` against torch's ``WeightedRandomSampler`` (class-balanced).

    Both samplers draw the same number of indices per epoch (the adaptive sampler's balanced plan); a long-tailed
    label set (imbalance 100) with a 30 % synthetic pool is used. Returns one row per size.
    """
    rows = []
    rng = np.random.default_rng(seed)
    for n in sizes:
        p = 100.0 ** (-np.arange(num_classes) / (num_classes - 1))
        labels = rng.choice(num_classes, size=n, p=p / p.sum())
        synthetic = rng.random(n) < 0.3
        ours = AdaptiveRatioSampler(labels, synthetic, num_classes, target="balanced", ratios=0.5, seed=seed)
        counts = np.bincount(labels[~synthetic], minlength=num_classes)
        weights = torch.as_tensor(1.0 / np.maximum(counts[labels], 1), dtype=torch.double)
        theirs = WeightedRandomSampler(weights, num_samples=len(ours), replacement=True, generator=torch.Generator().manual_seed(seed))
        t_ours = _best_of(lambda: sum(1 for _ in ours), repeats)
        t_theirs = _best_of(lambda: sum(1 for _ in theirs), repeats)
        rows.append({"items": n, "epoch_samples": len(ours), "adaptive_s": t_ours, "weighted_s": t_theirs, "ratio": t_ours / t_theirs})
    return rows


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB); with CUDA, the peak allocated GPU memory is separate."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


def _in_fresh_process(fn, *args):
    """Run ``fn(*args)`` (a function of this module, JSON arguments, threads last) in a new Python process and return
    its result with the process's peak memory, so every measurement gets its own peak."""
    import json
    import subprocess
    import sys

    code = ("import json, sys; from monai_breastlt.bench import speed; "
            "print('@@' + json.dumps(speed._measured(getattr(speed, sys.argv[1]), *json.loads(sys.argv[2]))))")
    proc = subprocess.run([sys.executable, "-c", code, fn.__name__, json.dumps(args)], capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("@@")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark process {fn.__name__} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][2:])


def _measured(fn, *args):
    torch.set_num_threads(args[-1])
    out = fn(*args[:-1])
    out["peak_rss_mb"] = peak_rss_mb()
    if torch.cuda.is_available():
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _training_run(adaptive: bool, n_items: int, epochs: int, image_size: int, batch_size: int, seed: int) -> dict:
    """One MONAI training run on in-memory long-tailed data (no file I/O, so only the pipelines differ)."""
    from monai.data import DataLoader
    from monai.engines import SupervisedEvaluator, SupervisedTrainer
    from monai.handlers import ValidationHandler, from_engine
    from monai.networks.nets import ResNet
    from monai.utils import set_determinism
    from torch.utils.data import RandomSampler

    from monai_breastlt.handlers import AdaptiveSamplerHandler
    from monai_breastlt.metrics import LongTailMetric
    from monai_breastlt.rl import MultiAgentRatioPolicy

    set_determinism(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    num_classes = 6
    rng = np.random.default_rng(seed)
    p = 50.0 ** (-np.arange(num_classes) / (num_classes - 1))
    labels = rng.choice(num_classes, size=n_items, p=p / p.sum())
    synthetic = rng.random(n_items) < 0.3
    images = torch.rand(n_items, 1, image_size, image_size)
    data = [{"image": images[i], "label": int(labels[i])} for i in range(n_items)]
    val = data[: max(n_items // 10, num_classes)]
    net = ResNet("basic", [1, 1, 1, 1], [32, 64, 128, 256], spatial_dims=2, n_input_channels=1, num_classes=num_classes).to(device)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    evaluator = SupervisedEvaluator(
        device, DataLoader(val, batch_size=batch_size), net,
        key_val_metric={"long_tail": LongTailMetric(num_classes, output_transform=from_engine(["pred", "label"]))},
    )
    handlers = [ValidationHandler(validator=evaluator, epoch_level=True, interval=1)]
    if adaptive:
        sampler = AdaptiveRatioSampler(labels, synthetic, num_classes, target="distribution", epoch_size=n_items, ratios=0.3, seed=seed)
        handlers.append(AdaptiveSamplerHandler(sampler, MultiAgentRatioPolicy(n_steps=2, seed=seed), evaluator))
    else:
        sampler = RandomSampler(data, generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(data, batch_size=batch_size, sampler=sampler)
    trainer = SupervisedTrainer(device, epochs, loader, net, opt, torch.nn.CrossEntropyLoss(), train_handlers=handlers)
    start = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - start
    return {"pipeline": "adaptive sampler + RL handler" if adaptive else "MONAI + RandomSampler", "seconds": seconds,
            "samples_per_s": epochs * len(sampler) / seconds}


def bench_training(n_items: int = 2048, epochs: int = 3, image_size: int = 64, batch_size: int = 32, seed: int = 0, threads: int = 1) -> list[dict]:
    """(b) Classifier training throughput: our sampler + ``AdaptiveSamplerHandler`` (PPO policy) against a plain MONAI
    ``SupervisedTrainer`` with ``RandomSampler``, the same network, data, epochs and validation, each in a fresh
    process (so (d) gets each pipeline's own peak memory)."""
    rows = [_in_fresh_process(_training_run, adaptive, n_items, epochs, image_size, batch_size, seed, threads) for adaptive in (False, True)]
    for r in rows:
        r["ratio"] = r["samples_per_s"] / rows[0]["samples_per_s"]
    return rows


def _sampling_run(ours: bool, kind: str, steps: int, batch: int, image_size: int, ldm_kwargs: dict, seed: int) -> dict:
    """Sample ``batch`` images with our inferer or with a bare loop over MONAI's networks and scheduler."""
    from monai_breastlt.inferers import ClassSketchLatentDiffusionInferer
    from monai_breastlt.networks import SketchConditionedLDM

    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = SketchConditionedLDM(num_classes=4, **ldm_kwargs).to(device).eval()
    down = image_size // 2 ** (len(model.config["ae_channels"]) - 1)
    noise = torch.randn(batch, model.config["latent_channels"], down, down, generator=torch.Generator().manual_seed(seed)).to(device)
    labels = torch.arange(batch, device=device) % 4
    sketch = torch.rand(batch, 1, image_size, image_size, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    scheduler = model.make_scheduler(kind)
    scheduler.set_timesteps(steps, device=device)
    gs, null = 2.0, 4
    start = time.perf_counter()
    with torch.no_grad():
        if ours:
            inferer = ClassSketchLatentDiffusionInferer(scheduler, null_class=null, guidance_scale=gs, scale_factor=float(model.scale_factor))
            inferer.sample(noise, model.autoencoder, model.unet, labels, model.controlnet, sketch, generator=torch.Generator(device=device).manual_seed(seed))
        else:  # the loop a user would write with MONAI alone: ControlNet residuals into the UNet, CFG by batch doubling
            lab2, cond2, lat = torch.cat([labels, torch.full_like(labels, null)]), torch.cat([sketch, sketch]), noise
            gen = torch.Generator(device=device).manual_seed(seed)
            for t in scheduler.timesteps:
                x = torch.cat([lat, lat])
                ts = torch.full((x.shape[0],), int(t), device=device, dtype=torch.long)
                d, m = model.controlnet(x=x, timesteps=ts, controlnet_cond=cond2, class_labels=lab2)
                pred = model.unet(x, ts, class_labels=lab2, down_block_additional_residuals=d, mid_block_additional_residual=m)
                c, u = pred.chunk(2)
                lat, _ = scheduler.step(u + gs * (c - u), int(t), lat, generator=gen)
            model.autoencoder.decode_stage_2_outputs(lat / model.scale_factor)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"sampler": f"{kind.upper()} {steps}", "impl": "ClassSketchLatentDiffusionInferer" if ours else "bare MONAI loop",
            "seconds": seconds, "images_per_s": batch / seconds}


def bench_sampling(schedules: Sequence[tuple[str, int]] = (("ddim", 20), ("ddim", 50), ("ddpm", 1000)), batch: int = 4,
                   image_size: int = 64, ldm_kwargs: dict | None = None, seed: int = 0, threads: int = 1) -> list[dict]:
    """(c) Synthesis sampling speed (images/s, classifier-free guidance 2, ControlNet on) of our inferer against a
    bare loop over the same MONAI networks and scheduler; every measurement in a fresh process ((d) peak memory)."""
    rows = []
    for kind, steps in schedules:
        pair = [_in_fresh_process(_sampling_run, ours, kind, steps, batch, image_size, dict(ldm_kwargs or {}), seed, threads) for ours in (False, True)]
        pair[1]["ratio"] = pair[1]["images_per_s"] / pair[0]["images_per_s"]
        pair[0]["ratio"] = 1.0
        rows += pair
    return rows


def bench_overlays(image_size: int = 256, source_sizes: Sequence[int] = (256, 512), n_images: int = 48, repeats: int = 5,
                   seed: int = 0, data: str | None = None) -> list[dict]:
    """(e) Cost of the overlay masking transform: ``ultrasound_preprocessing(image_size)`` per image without and with
    ``mask_overlays`` (detection at the file's resolution, then inpainting), on phantom scans of each source size with
    burnt-in calipers and text (strength 1: half the images carry them). Both pipelines run over the same files,
    alternately, each image timed ``repeats`` times per pipeline (the least counts); ``overhead`` is the extra mean
    time per image over the plain preprocessing. With ``data`` (any source ``data-info`` reads), its first
    ``n_images`` images are timed as well (``source_px``: ``"data"``).

    On the phantom rows the detector is scored too, against the exact overlay pixels (:func:`_detection_quality`):
    ``pixel_recall`` and ``pixel_precision`` of its mask over the images with marks, and the shares of images with
    and without marks that it flags (``flagged_marked``, ``flagged_clean``)."""
    import tempfile

    from monai_breastlt.data import read_any_source
    from monai_breastlt.transforms import ultrasound_preprocessing

    rows = []
    for source in [*source_sizes, *(["data"] if data else [])]:
        with tempfile.TemporaryDirectory() as tmp:
            if source == "data":
                files = [i["image"] for v in read_any_source(data)[0].values() for i in v][:n_images]
                quality = {}  # no ground truth for a data set's marks
            else:
                files = _phantom_files(tmp, n_images, source, seed, overlay_strength=1.0)
                quality = _detection_quality(files, _phantom_files(f"{tmp}/clean", n_images, source, seed))
            pipes = {"plain": ultrasound_preprocessing(image_size, mask_key=None),
                     "masked": ultrasound_preprocessing(image_size, mask_key=None, mask_overlays=True)}
            # per image, the least of `repeats` timings of each pipeline, interleaved: a busy machine's bursts of load
            # hit single timings, and the least of them is what the code itself costs
            best = {name: np.full(len(files), np.inf) for name in pipes}
            for _ in range(repeats):
                for k, f in enumerate(files):
                    for name, pipe in pipes.items():
                        best[name][k] = min(best[name][k], _best_of(lambda: pipe({"image": f}), 1))
        t_plain, t_masked = float(best["plain"].mean()), float(best["masked"].mean())
        rows.append({"source_px": source, "image_size": image_size, "images": len(files), "plain_ms": 1000 * t_plain,
                     "masked_ms": 1000 * t_masked, "overhead": (t_masked - t_plain) / t_plain,
                     **quality})
    return rows


def _phantom_files(folder: str, n_images: int, image_size: int, seed: int, **overlays) -> list[str]:
    """The image files of a six-subtype phantom of about ``n_images`` images (``overlays``: ``generate_phantom``'s)."""
    from monai_breastlt.data import SECTIONS, generate_phantom, load_datalist_file

    doc = load_datalist_file(generate_phantom(folder, counts=[max(1, n_images // 6)] * 6, image_size=image_size, seed=seed, **overlays))
    return [i["image"] for s in SECTIONS for i in doc[s]]


def _detection_quality(marked_files: Sequence[str], clean_files: Sequence[str]) -> dict:
    """``DetectOverlays`` against the exact overlay pixels of phantom scans: where a scan differs from the same scan
    written without overlays (same order in both lists; the phantom draws its lesions from a stream that overlays do
    not touch)."""
    from PIL import Image

    from monai_breastlt.transforms import DetectOverlays

    detect = DetectOverlays()
    hit = truth_px = found_px = 0
    flagged = {True: [], False: []}
    for marked, clean in zip(marked_files, clean_files):
        img = np.asarray(Image.open(marked), np.float32)
        truth = img != np.asarray(Image.open(clean), np.float32)
        found = detect.mask(img[None] / 255.0)
        if truth.any():
            hit, truth_px, found_px = hit + np.count_nonzero(found & truth), truth_px + np.count_nonzero(truth), found_px + np.count_nonzero(found)
        flagged[bool(truth.any())].append(bool(found.any()))
    return {"pixel_recall": hit / max(truth_px, 1), "pixel_precision": hit / max(found_px, 1),
            "flagged_marked": float(np.mean(flagged[True])) if flagged[True] else float("nan"),
            "flagged_clean": float(np.mean(flagged[False])) if flagged[False] else float("nan")}
