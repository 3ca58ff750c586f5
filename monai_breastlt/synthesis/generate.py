"""Generate a synthetic pool: sketches from unannotated real images, class-conditioned images, a datalist."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from tqdm import tqdm

from monai_breastlt.data.datalist import load_datalist_file, validate_items, write_datalist
from monai_breastlt.inferers import ClassSketchLatentDiffusionInferer
from monai_breastlt.networks import SketchConditionedLDM, SketchPerceptionNet
from monai_breastlt.transforms import PRESCALED_KEY, RandSketchPerturb, ultrasound_preprocessing
from monai_breastlt.utils import SETTING_RANGES, atomic_open, check_range, rank_and_world_size
from monai_breastlt.visualize import save_sample_grid

__all__ = ["plan_targets", "save_png", "SyntheticPoolGenerator"]

logger = logging.getLogger(__name__)


def plan_targets(real_counts: Sequence[int], mode: str | Sequence[int] = "fill", n: int | None = None) -> list[int]:
    """Synthetic images to generate per class.

    Args:
        real_counts: real training count per class.
        mode: ``"fill"`` (top every class up to the largest), ``"up_to"`` (top up to ``n``), ``"each"``
            (``n`` per class) or explicit per-class counts.
        n: the count of ``"up_to"`` / ``"each"``.
    """
    counts = [int(c) for c in real_counts]
    if not isinstance(mode, str):
        out = [int(m) for m in mode]
        if len(out) != len(counts) or min(out) < 0:
            raise ValueError(f"explicit targets must be {len(counts)} non-negative counts, got {out}.")
        return out
    if mode == "fill":
        return [max(counts) - c for c in counts]
    if mode in ("up_to", "each"):
        if n is None or n < 0:
            raise ValueError(f"mode '{mode}' needs a non-negative n.")
        return [max(n - c, 0) for c in counts] if mode == "up_to" else [n] * len(counts)
    raise ValueError(f"mode must be 'fill', 'up_to', 'each' or a list of counts, got '{mode}'.")


def save_png(array: torch.Tensor | np.ndarray, path: str | os.PathLike) -> None:
    """Write a ``(H, W)`` or ``(1, H, W)`` image in [0, 1] as 8-bit PNG, atomically."""
    a = np.asarray(torch.as_tensor(array).detach().cpu().float().squeeze().clamp(0, 1).numpy())
    buf = io.BytesIO()
    Image.fromarray((a * 255).round().astype(np.uint8)).save(buf, format="PNG")
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())


class SyntheticPoolGenerator:
    """
    Write a synthetic pool ``OUT/<class>/<id>.png`` (+ ``<id>_sketch.png``) and its datalist ``OUT/pool.json``.

    Every image ``k`` of class ``c`` has a fixed id and seed derived from ``(seed, c, k)``: its sketch source,
    sketch perturbation and initial noise do not depend on batching, so a run killed midway and started again
    generates only the missing ids and yields the same pool. The manifest is rewritten atomically after each
    batch; entries whose files vanished are generated again.

    In a ``torch.distributed`` run (``torchrun``) every rank generates every ``world_size``-th missing image and
    records it in its own ``pool.rank<r>.json``; rank 0 then merges them into ``pool.json`` atomically, the same
    manifest a single process writes.

    Args:
        model: the trained ``SketchConditionedLDM``.
        perception: the trained ``SketchPerceptionNet`` (sketches of unannotated images).
        classes: class names in label order.
        out_dir: pool folder.
        image_size: generated image side (the model's training size).
        num_inference_steps: sampling steps.
        sampler: ``"ddim"`` or ``"ddpm"``.
        guidance_scale: classifier-free guidance scale.
        guidance_interval: ``(t_low, t_high)``: guide only at these timesteps (``None``: every step; see
            :class:`~monai_breastlt.inferers.ClassSketchLatentDiffusionInferer`).
        conditioning_scale: ControlNet scale.
        batch_size: images per sampling batch.
        seed: base seed of the pool.
        cross_class_sketches: take sketches from images of any class (with ``perturb``) rather than the same class.
        perturb: sketch perturbation probability (0: none).
        device: torch device.
    """

    def __init__(
        self,
        model: SketchConditionedLDM,
        perception: SketchPerceptionNet,
        classes: Sequence[str],
        out_dir: str | os.PathLike,
        image_size: int = 64,
        num_inference_steps: int = 20,
        sampler: str = "ddim",
        guidance_scale: float = 2.0,
        conditioning_scale: float = 1.0,
        batch_size: int = 16,
        seed: int = 0,
        cross_class_sketches: bool = False,
        perturb: float = 0.5,
        device: str | torch.device = "cpu",
        guidance_interval: Sequence[int] | None = None,
    ) -> None:
        if sampler not in ("ddim", "ddpm"):
            raise ValueError(f"sampler must be 'ddim' or 'ddpm', got '{sampler}'.")
        self._check_settings(model, image_size, num_inference_steps, guidance_scale, conditioning_scale, batch_size, seed, perturb,
                             guidance_interval)
        self.model, self.perception = model.eval().to(device), perception.eval().to(device)
        self.classes = list(classes)
        if model.num_classes != len(self.classes):
            raise ValueError(f"the model has {model.num_classes} classes, the class list {len(self.classes)}.")
        self.out = Path(out_dir)
        self.image_size, self.steps, self.sampler = image_size, num_inference_steps, sampler
        self.guidance_scale, self.conditioning_scale = guidance_scale, conditioning_scale
        self.guidance_interval = tuple(guidance_interval) if guidance_interval is not None else None
        self.batch_size, self.seed, self.cross_class, self.perturb = batch_size, seed, cross_class_sketches, perturb
        self.device = torch.device(device)
        self.manifest = self.out / "pool.json"
        self.preprocess = ultrasound_preprocessing(image_size, mask_key=None)

    @staticmethod
    def _check_settings(model: SketchConditionedLDM, image_size: int, steps: int, guidance_scale: float, conditioning_scale: float,
                        batch_size: int, seed: int, perturb: float, guidance_interval: Sequence[int] | None) -> None:
        """Refuse, before any image is written, a setting that would write a wrong pool (a NaN scale gives black
        images, 0 steps pure noise, another image size than the model's images it never learnt)."""
        train_steps = int(model.noise_schedule.get("num_train_timesteps", 1000))
        for name, value in (("guidance_scale", guidance_scale), ("conditioning_scale", conditioning_scale), ("perturb", perturb),
                            ("batch_size", batch_size), ("seed", seed)):
            check_range(name, value, **SETTING_RANGES[name])
        check_range("num_inference_steps", steps, 1, train_steps, integer=True)  # no more steps than the model was trained with
        check_range("image_size", image_size, model.latent_downsample, integer=True)
        if image_size % model.latent_downsample:
            raise ValueError(f"image_size must be a multiple of the autoencoder's downsampling {model.latent_downsample}, got {image_size}.")
        if model.image_size is not None and model.image_size != [image_size, image_size]:
            trained = "x".join(map(str, model.image_size))
            raise ValueError(f"the model was trained on {trained} images (recorded in its checkpoint), image_size is {image_size}: "
                             f"generate at its size (image_size {model.image_size[0]}, generate --image-size {model.image_size[0]}).")
        if guidance_interval is not None:
            if len(guidance_interval) != 2:
                raise ValueError(f"guidance_interval must be two timesteps [t_low, t_high], got {list(guidance_interval)}.")
            low, high = guidance_interval
            check_range("guidance_interval t_low", low, 0, train_steps - 1, integer=True)
            check_range("guidance_interval t_high", high, low, train_steps - 1, integer=True)

    def _pool_id(self, label: int, k: int) -> str:
        """The fixed id of the ``k``-th synthetic image of class ``label``."""
        return f"{self.classes[label]}_{k:05d}"

    def settings(self) -> dict:
        """What decides the images, recorded in the manifest as ``generator``."""
        return {"seed": self.seed, "steps": self.steps, "sampler": self.sampler, "guidance_scale": self.guidance_scale,
                "guidance_interval": list(self.guidance_interval) if self.guidance_interval is not None else None,
                "conditioning_scale": self.conditioning_scale, "perturb": self.perturb, "cross_class_sketches": self.cross_class}

    def existing(self) -> list[dict]:
        """Entries of the manifest (and of the per-rank manifests a killed multi-process run left) whose image and
        sketch files are still there, one per id.

        Raises:
            ValueError: a manifest holds other classes, or was generated with other settings (resuming would mix
                two pools; a setting that an older manifest did not record is not compared).
        """
        found: dict[str, dict] = {}
        for path in [self.manifest, *self._rank_manifests()]:
            if path.is_file():
                found.update((i["id"], i) for i in self._read_manifest(path))
        return list(found.values())

    def _rank_manifests(self) -> list[Path]:
        return sorted(self.out.glob("pool.rank*.json"))

    def _read_manifest(self, path: Path) -> list[dict]:
        doc = load_datalist_file(path)
        if doc["classes"] != self.classes:
            raise ValueError(f"{path}: pool classes {doc['classes']} differ from {self.classes}.")
        recorded, now = doc.get("generator") or {}, self.settings()
        differ = {k: (recorded[k], now[k]) for k in recorded.keys() & now.keys() if recorded[k] != now[k]}
        if differ:
            changes = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in sorted(differ.items()))
            raise ValueError(f"{path}: the pool was generated with other settings ({changes}); resuming would mix two pools: "
                             "give another out_dir, or remove the pool to start again.")
        kept = [i for i in doc.get("training", []) if os.path.isfile(i["image"]) and os.path.isfile(i.get("sketch", ""))]
        if len(kept) < len(doc.get("training", [])):
            logger.warning("%s: %d entries point at missing files; they will be generated again.", path, len(doc["training"]) - len(kept))
        return kept

    def _write_manifest(self, path: Path, entries: list[dict]) -> None:
        """Write entries atomically in one order (class, then id), whichever process generated them."""
        write_datalist(path, {"training": sorted(entries, key=lambda e: (e["label"], e["id"]))}, self.classes, generator=self.settings())

    def _consolidate(self, entries: list[dict]) -> None:
        """Rank 0 (or the only process): ``entries`` become ``pool.json``, the per-rank manifests are removed."""
        self._write_manifest(self.manifest, entries)
        for path in self._rank_manifests():
            path.unlink(missing_ok=True)

    def _share(self, jobs: list[dict], entries: list[dict], rank: int, world: int) -> tuple[list[dict], list[dict]]:
        """A multi-process run's start: every rank has read the same manifests and planned the same jobs; rank 0 writes
        the entries kept so far to ``pool.json``, and each rank takes every ``world``-th job, with no entries of its
        own yet."""
        dist.barrier()
        if rank == 0:
            self._consolidate(entries)
        dist.barrier()
        return jobs[rank::world], []

    def _merge(self, rank: int) -> None:
        """A multi-process run's end: rank 0 merges the ranks' manifests into ``pool.json``, the others wait for it."""
        dist.barrier()
        if rank == 0:
            self._consolidate(self.existing())
        dist.barrier()

    def make_inferer(self) -> ClassSketchLatentDiffusionInferer:
        """The sampler of this pool: the noise schedule the model was trained with, this generator's sampler, steps,
        guidance and ControlNet scale."""
        return ClassSketchLatentDiffusionInferer(
            self.model.make_scheduler(self.sampler, self.steps), float(self.model.scale_factor), self.guidance_scale, self.conditioning_scale,
            self.model.null_class, self.guidance_interval,
        )

    def _jobs(self, targets: Sequence[int], sources: Sequence[dict], done: set[str]) -> list[dict]:
        by_class = {c: [s for s in sources if s["label"] == c] for c in range(len(self.classes))}
        jobs = []
        for c, n in enumerate(targets):
            pool = sources if self.cross_class or not by_class[c] else by_class[c]
            if not pool:
                raise ValueError("no source images to take sketches from.")
            for k in range(n):
                uid = self._pool_id(c, k)
                if uid in done:
                    continue
                item_seed = int(np.random.default_rng([self.seed, c, k]).integers(2**31 - 1))
                src = pool[int(np.random.default_rng(item_seed).integers(len(pool)))]
                jobs.append({"id": uid, "label": c, "seed": item_seed, "source": src["image"]})
        return jobs

    @torch.no_grad()
    def _sketches(self, jobs: list[dict]) -> torch.Tensor:
        images = torch.stack([self.preprocess({"image": j["source"]})["image"] for j in jobs]).to(self.device)
        sketches = self.perception.predict_sketch(images).cpu()
        if self.perturb > 0:
            for i, j in enumerate(jobs):
                sketches[i] = RandSketchPerturb(prob=self.perturb).set_random_state(j["seed"] % (2**31))(sketches[i])
        return sketches

    @torch.no_grad()
    def run(self, targets: Sequence[int], sources: Sequence[dict], verbose: bool = True, progress: bool = False) -> Path:
        """Generate until every class ``c`` has ``targets[c]`` images; returns the manifest path.

        Args:
            targets: images per class (see :func:`plan_targets`).
            sources: real entries (``image``, ``label``) whose sketches condition generation; masks are not used.
            verbose: log progress.
            progress: show a progress bar (tqdm) over the images to generate.
        """
        if len(targets) != len(self.classes):
            raise ValueError(f"targets has {len(targets)} entries for {len(self.classes)} classes.")
        rank, world = rank_and_world_size()
        entries = self.existing()
        wanted = {self._pool_id(c, k) for c, n in enumerate(targets) for k in range(n)}
        entries = [e for e in entries if e["id"] in wanted]
        jobs = self._jobs(targets, sources, {e["id"] for e in entries})
        if world > 1:
            jobs, entries = self._share(jobs, entries, rank, world)
        own = self.manifest if world == 1 else self.out / f"pool.rank{rank}.json"
        inferer = self.make_inferer()
        lat = self.model.autoencoder.latent_channels
        side = self.image_size // self.model.latent_downsample
        bar = tqdm(total=len(jobs), desc="generating", unit="image", leave=False, disable=not progress or not jobs)
        for b in range(0, len(jobs), self.batch_size):
            batch = jobs[b : b + self.batch_size]
            sketches = self._sketches(batch)
            noise = torch.stack([torch.randn(lat, side, side, generator=torch.Generator().manual_seed(j["seed"])) for j in batch])
            labels = torch.tensor([j["label"] for j in batch])
            gen = torch.Generator().manual_seed(batch[0]["seed"])
            images = inferer.sample(
                noise.to(self.device), self.model.autoencoder, self.model.unet, labels.to(self.device), self.model.controlnet,
                sketches.to(self.device), generator=gen,
            ).cpu()
            for j, img, sk in zip(batch, images, sketches):
                folder = self.out / self.classes[j["label"]]
                img_path, sk_path = folder / f"{j['id']}.png", folder / f"{j['id']}_sketch.png"
                save_png(img, img_path)
                save_png(sk, sk_path)
                entries.append(
                    {"id": j["id"], "image": str(img_path), "sketch": str(sk_path), "label": j["label"],
                     "class_name": self.classes[j["label"]], "source": "synthetic", "seed": j["seed"], "sketch_from": j["source"],
                     PRESCALED_KEY: True}  # written in the model's [0, 1] space: loaders must not stretch it again
                )
            self._write_manifest(own, entries)
            bar.update(len(batch))
            if verbose:
                logger.info("generated %d/%d images", b + len(batch), len(jobs))
        bar.close()
        if world > 1:
            self._merge(rank)
            if rank != 0:
                return self.manifest
            entries = self._read_manifest(self.manifest)
        elif not self.manifest.is_file() or self._rank_manifests():
            # nothing written yet (an empty pool is still a pool), or the per-rank manifests of a killed torchrun
            self._consolidate(entries)
        validate_items(entries, self.classes, str(self.manifest), check_files=True)
        if entries:
            by_class: dict[str, list] = {}
            for e in sorted(entries, key=lambda e: e["id"]):
                imgs = by_class.setdefault(e["class_name"], [])
                if len(imgs) < 6:
                    imgs.append(np.asarray(Image.open(e["image"]), dtype=np.float32) / 255.0)
            save_sample_grid(by_class, self.out / "sample_grid.png")
        return self.manifest
