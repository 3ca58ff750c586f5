"""Ultrasound speckle augmentation (multiplicative noise), which MONAI's additive noise transforms lack."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

__all__ = ["RandSpeckleNoise", "RandSpeckleNoised", "RandSpeckleNoiseD", "RandSpeckleNoiseDict"]


class RandSpeckleNoise(RandomizableTransform):
    """
    Multiply an image by unit-mean speckle noise: ``img * (1 + strength * (n - 1))``.

    Fully developed speckle has a Rayleigh-distributed amplitude; log-compressed or partially developed
    speckle is closer to a Gamma law (Nakagami family). The noise has mean 1, so the local echo level is kept.

    Args:
        prob: probability of adding noise.
        distribution: ``"rayleigh"`` or ``"gamma"``.
        strength: blend between no noise (0) and full speckle (1); sampled uniformly in [0, strength]
            when ``sample_strength``.
        gamma_shape: shape ``k`` of the Gamma law (variance ``1/k``); larger is milder.
        sample_strength: sample the strength per call.
        clip: clip the output to this ``(min, max)``; ``None``: no clipping.
        dtype: output data type.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        prob: float = 0.1,
        distribution: str = "rayleigh",
        strength: float = 0.3,
        gamma_shape: float = 4.0,
        sample_strength: bool = True,
        clip: tuple[float, float] | None = (0.0, 1.0),
        dtype=np.float32,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        if distribution not in ("rayleigh", "gamma"):
            raise ValueError(f"distribution must be 'rayleigh' or 'gamma', got '{distribution}'.")
        if strength < 0 or gamma_shape <= 0:
            raise ValueError(f"need strength >= 0 and gamma_shape > 0, got {strength}, {gamma_shape}.")
        self.distribution = distribution
        self.strength = strength
        self.gamma_shape = gamma_shape
        self.sample_strength = sample_strength
        self.clip = clip
        self.dtype = dtype
        self.noise: np.ndarray | None = None

    def randomize(self, img: NdarrayOrTensor) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        strength = self.R.uniform(0, self.strength) if self.sample_strength else self.strength
        if self.distribution == "rayleigh":
            n = self.R.rayleigh(scale=1.0 / np.sqrt(np.pi / 2), size=img.shape)  # mean 1
        else:
            n = self.R.gamma(self.gamma_shape, 1.0 / self.gamma_shape, size=img.shape)  # mean 1
        self.noise = (1.0 + strength * (n - 1.0)).astype(self.dtype)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        img = convert_to_tensor(img, track_meta=get_track_meta())
        if randomize:
            self.randomize(img)
        if not self._do_transform:
            return img
        if self.noise is None:
            raise RuntimeError("please call the `randomize()` function first.")
        noise, *_ = convert_to_dst_type(self.noise, img)
        out = img * noise
        if self.clip is not None:
            out = torch.clamp(out, *self.clip)
        return out


class RandSpeckleNoised(RandomizableTransform, MapTransform):
    """
    Dictionary-based wrapper of :py:class:`RandSpeckleNoise`.

    Args:
        keys: keys of the images to corrupt.
        prob: probability of adding noise (one draw for all keys).
        allow_missing_keys: don't raise if a key is missing.
        kwargs: passed to :py:class:`RandSpeckleNoise`.
    """

    backend = RandSpeckleNoise.backend

    def __init__(self, keys: KeysCollection, prob: float = 0.1, allow_missing_keys: bool = False, **kwargs) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.rand_speckle = RandSpeckleNoise(prob=1.0, **kwargs)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandSpeckleNoised:
        super().set_random_state(seed, state)
        self.rand_speckle.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            for key in self.key_iterator(d):
                d[key] = convert_to_tensor(d[key], track_meta=get_track_meta())
            return d
        for key in self.key_iterator(d):
            self.rand_speckle.randomize(d[key])
            d[key] = self.rand_speckle(d[key], randomize=False)
        return d


RandSpeckleNoiseD = RandSpeckleNoiseDict = RandSpeckleNoised
