"""Sketch maps: the anatomical prior that conditions the ControlNet, and its random perturbation."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.networks.layers import GaussianFilter
from monai.transforms import MapTransform, Rand2DElastic, RandomizableTransform, SobelGradients, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

__all__ = [
    "ExtractSketch",
    "ExtractSketchd",
    "ExtractSketchD",
    "ExtractSketchDict",
    "RandSketchPerturb",
    "RandSketchPerturbd",
    "RandSketchPerturbD",
    "RandSketchPerturbDict",
    "mask_contour",
    "SketchTargetd",
    "SketchTargetD",
    "SketchTargetDict",
]


def smooth_image(img: torch.Tensor, sigma: float | Sequence[float]) -> torch.Tensor:
    """Gaussian smoothing of a ``(C, H, W)`` tensor with MONAI's separable filter.

    The image is padded by replication first: the filter's zero padding would draw a false edge at the border.
    """
    sig = [float(sigma)] * 2 if isinstance(sigma, (int, float)) else [float(v) for v in sigma]
    py, px = (min(int(3 * v) + 1, n - 1) for v, n in zip(sig, img.shape[-2:]))
    padded = F.pad(img.unsqueeze(0), (px, px, py, py), mode="replicate")
    return GaussianFilter(2, sig)(padded)[0, :, py : py + img.shape[-2], px : px + img.shape[-1]]


def _normalise(g: torch.Tensor, quantile: float, low: float) -> torch.Tensor:
    """Scale a response by its ``quantile`` and soft-threshold at ``low`` so only strokes remain."""
    q = torch.quantile(g.flatten(), quantile).clamp_min(1e-6)
    return ((g / q - low) / (1 - low)).clamp(0, 1)


def mask_contour(mask: torch.Tensor, width: int = 1) -> torch.Tensor:
    """The contour of a binary ``(C, H, W)`` mask: dilation minus erosion with a ``2 * width + 1`` window."""
    m = (mask > 0.5).float().unsqueeze(0)
    k = 2 * width + 1
    dil = F.max_pool2d(m, k, stride=1, padding=width)
    ero = -F.max_pool2d(-m, k, stride=1, padding=width)
    return (dil - ero).squeeze(0)


class ExtractSketch(Transform):
    """
    Compute the sketch map of a 2D ultrasound image: the anatomical prior that the ControlNet is fed.

    The sketch is the pixel-wise maximum of three parts, each in [0, 1]:

    - multi-scale edges: Sobel gradient magnitude of the despeckled image at several Gaussian scales;
    - tissue-layer boundaries: vertical gradient of the image smoothed strongly along the lateral axis
      (skin, fat, gland and muscle interfaces run roughly parallel to the transducer);
    - the lesion contour, when a mask is given.

    It works without a mask (then only edges and layers), which is how sketches of unannotated images are made.

    Args:
        edge_sigmas: Gaussian scales (pixels at 128 px; scaled with the image size) of the edge detector.
        despeckle_sigma: smoothing applied before edge detection, to suppress speckle.
        layer_sigma: ``(axial, lateral)`` smoothing of the layer detector.
        quantile: responses are scaled by this quantile of their own distribution.
        threshold: soft threshold (fraction of the scaled response) below which strokes are dropped.
        edge_weight: weight of the edge part.
        layer_weight: weight of the layer part.
        contour_width: half-width in pixels of the mask contour.
        as_channels: return the three parts as separate channels ``(3, H, W)`` instead of their maximum.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        edge_sigmas: Sequence[float] = (2.0, 4.0),
        despeckle_sigma: float = 1.5,
        layer_sigma: tuple[float, float] = (2.0, 12.0),
        quantile: float = 0.995,
        threshold: float = 0.3,
        edge_weight: float = 1.0,
        layer_weight: float = 1.0,
        contour_width: int = 1,
        as_channels: bool = False,
    ) -> None:
        if not edge_sigmas or min(edge_sigmas) <= 0:
            raise ValueError(f"edge_sigmas must be positive scales, got {edge_sigmas}.")
        if not 0 < quantile <= 1 or not 0 <= threshold < 1:
            raise ValueError(f"need 0 < quantile <= 1 and 0 <= threshold < 1, got {quantile}, {threshold}.")
        self.edge_sigmas = tuple(edge_sigmas)
        self.despeckle_sigma = despeckle_sigma
        self.layer_sigma = layer_sigma
        self.quantile = quantile
        self.threshold = threshold
        self.edge_weight = edge_weight
        self.layer_weight = layer_weight
        self.contour_width = contour_width
        self.as_channels = as_channels
        self.sobel = SobelGradients(kernel_size=3, padding_mode="replicate")

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor | None = None) -> NdarrayOrTensor:
        """
        Args:
            img: channel-first 2D image ``(C, H, W)``; channels are averaged.
            mask: optional lesion mask ``(1, H, W)`` of the same spatial shape.
        """
        out_type = img
        img_t = convert_to_tensor(img, track_meta=False, dtype=torch.float32)
        if img_t.ndim != 3:
            raise ValueError(f"ExtractSketch expects a channel-first 2D image (C, H, W), got shape {tuple(img_t.shape)}.")
        x = img_t.mean(0, keepdim=True)
        x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-6)
        scale = max(x.shape[-2:]) / 128.0
        x = smooth_image(x, self.despeckle_sigma * scale)
        edges = torch.zeros_like(x)
        for sigma in self.edge_sigmas:
            g = self.sobel(smooth_image(x, sigma * scale))
            edges = torch.maximum(edges, _normalise(torch.linalg.vector_norm(g, dim=0, keepdim=True), self.quantile, self.threshold))
        layered = smooth_image(x, [self.layer_sigma[0] * scale, self.layer_sigma[1] * scale])
        layers = _normalise(self.sobel(layered)[:1].abs(), self.quantile, self.threshold)
        contour = torch.zeros_like(x)
        if mask is not None:
            m = convert_to_tensor(mask, track_meta=False, dtype=torch.float32)
            if m.shape[-2:] != x.shape[-2:]:
                raise ValueError(
                    f"ExtractSketch: mask spatial shape {tuple(m.shape[-2:])} differs from image {tuple(x.shape[-2:])}."
                )
            contour = mask_contour(m.reshape(-1, *m.shape[-2:]).amax(0, keepdim=True), self.contour_width)
        parts = torch.cat([self.edge_weight * edges, self.layer_weight * layers, contour]).clamp(0, 1)
        out = parts if self.as_channels else parts.amax(0, keepdim=True)
        if isinstance(img, torch.Tensor) and get_track_meta():
            out = convert_to_tensor(out, track_meta=True)
            if hasattr(img, "meta"):
                out.meta = dict(img.meta)  # type: ignore[attr-defined]
            return out
        out, *_ = convert_to_dst_type(out, out_type, dtype=torch.float32 if isinstance(out_type, torch.Tensor) else np.float32)
        return out


class ExtractSketchd(MapTransform):
    """
    Dictionary-based wrapper of :py:class:`ExtractSketch`: writes the sketch of ``keys`` to ``sketch_key``.

    Args:
        keys: the image key (one key).
        mask_key: key of the lesion mask; when absent from the data (or ``None``) the sketch has no contour.
        sketch_key: key to write the sketch to.
        allow_missing_keys: don't raise if the image key is missing.
        kwargs: passed to :py:class:`ExtractSketch`.
    """

    backend = ExtractSketch.backend

    def __init__(
        self,
        keys: KeysCollection = "image",
        mask_key: str | None = "mask",
        sketch_key: str = "sketch",
        allow_missing_keys: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.sketch_key = sketch_key
        self.extractor = ExtractSketch(**kwargs)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d.get(self.mask_key) if self.mask_key is not None else None
            d[self.sketch_key] = self.extractor(d[key], mask)
        return d


class RandSketchPerturb(RandomizableTransform):
    """
    Randomly deform a sketch and drop some of its strokes, so one sketch yields many different images.

    Args:
        prob: probability of perturbing.
        rotate_range: rotation range in radians.
        scale_range: relative scale range (``0.1`` means 0.9-1.1).
        translate_range: translation range in pixels.
        magnitude_range: elastic deformation magnitude range (pixels).
        spacing: control-point spacing of the elastic deformation (pixels).
        dropout_prob: probability of erasing each cell of a ``dropout_cells`` x ``dropout_cells`` grid.
        dropout_cells: grid size of the stroke dropout.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        prob: float = 1.0,
        rotate_range: float = 0.1,
        scale_range: float = 0.1,
        translate_range: float = 4.0,
        magnitude_range: tuple[float, float] = (0.5, 1.5),
        spacing: float = 16.0,
        dropout_prob: float = 0.15,
        dropout_cells: int = 8,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        if not 0 <= dropout_prob < 1:
            raise ValueError(f"dropout_prob must be in [0, 1), got {dropout_prob}.")
        self.dropout_prob = dropout_prob
        self.dropout_cells = dropout_cells
        self.elastic = Rand2DElastic(
            spacing=spacing,
            magnitude_range=magnitude_range,
            prob=1.0,
            rotate_range=rotate_range,
            scale_range=(scale_range, scale_range),
            translate_range=(translate_range, translate_range),
            padding_mode="zeros",
            mode="bilinear",
        )
        self._keep: np.ndarray | None = None

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandSketchPerturb:
        super().set_random_state(seed, state)
        self.elastic.set_random_state(seed, state)
        return self

    def randomize(self, data: NdarrayOrTensor | None = None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        self._keep = (self.R.random_sample((self.dropout_cells, self.dropout_cells)) >= self.dropout_prob).astype(np.float32)
        self.elastic.randomize(data.shape[1:] if data is not None else None)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """
        Args:
            img: channel-first 2D sketch ``(C, H, W)`` in [0, 1].
            randomize: draw new parameters (``False`` reuses the last ones, e.g. for a paired image).
        """
        img_t = convert_to_tensor(img, track_meta=get_track_meta(), dtype=torch.float32)
        if randomize:
            self.randomize(img_t)
        if not self._do_transform:
            return img_t
        out = self.elastic(img_t, randomize=False)
        keep = torch.as_tensor(self._keep)[None, None]
        keep = F.interpolate(keep, size=tuple(out.shape[-2:]), mode="nearest")[0]
        out = (out * keep).clamp(0, 1)
        return out


class RandSketchPerturbd(RandomizableTransform, MapTransform):
    """
    Dictionary-based wrapper of :py:class:`RandSketchPerturb`; all keys get the same perturbation.

    Args:
        keys: keys of the sketches to perturb.
        prob: probability of perturbing.
        allow_missing_keys: don't raise if a key is missing.
        kwargs: passed to :py:class:`RandSketchPerturb`.
    """

    backend = RandSketchPerturb.backend

    def __init__(self, keys: KeysCollection = "sketch", prob: float = 1.0, allow_missing_keys: bool = False, **kwargs) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.perturb = RandSketchPerturb(prob=1.0, **kwargs)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandSketchPerturbd:
        super().set_random_state(seed, state)
        self.perturb.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            for key in self.key_iterator(d):
                d[key] = convert_to_tensor(d[key], track_meta=get_track_meta())
            return d
        first = True
        for key in self.key_iterator(d):
            if first:
                self.perturb.randomize(convert_to_tensor(d[key]))
                first = False
            d[key] = self.perturb(d[key], randomize=False)
        return d


ExtractSketchD = ExtractSketchDict = ExtractSketchd
RandSketchPerturbD = RandSketchPerturbDict = RandSketchPerturbd


class SketchTargetd(MapTransform):
    """
    The perception network's training target ``(3, H, W)``: ``[edges_and_layers, lesion_contour, has_mask]``,
    from :py:class:`ExtractSketch` parts; without a mask the contour and ``has_mask`` channels are 0.

    Args:
        keys: the image key.
        mask_key: the mask key (may be absent).
        target_key: key to write the target to.
        kwargs: passed to :py:class:`ExtractSketch`.
    """

    backend = ExtractSketch.backend

    def __init__(self, keys: KeysCollection = "image", mask_key: str = "mask", target_key: str = "sketch_target", **kwargs) -> None:
        super().__init__(keys)
        self.mask_key, self.target_key = mask_key, target_key
        self.extractor = ExtractSketch(as_channels=True, **kwargs)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d.get(self.mask_key)
            parts = torch.as_tensor(self.extractor(d[key], mask))
            has = torch.full_like(parts[:1], 1.0 if mask is not None else 0.0)
            d[self.target_key] = torch.cat([parts[:2].amax(0, keepdim=True), parts[2:3], has])
        return d


SketchTargetD = SketchTargetDict = SketchTargetd
