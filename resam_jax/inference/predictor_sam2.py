"""The JAX counterpart of `sam2.sam2_image_predictor.SAM2ImagePredictor`: the same
preprocessing (SAM2Transforms: [0, 1] pixels stretched to 1024 x 1024 by torchvision's
antialiased bilinear resize, ImageNet normalisation), arguments and outputs (low-res logits
clamped to +-32, masks bilinearly upsampled straight to the original size, threshold 0)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from resam_jax.models.sam.layers import resize_bilinear
from resam_jax.models.sam2 import Sam2, normalize_pixels

MASK_THRESHOLD = 0.0  # SAM2ImagePredictor(mask_threshold=0.0)
LOW_RES_CLAMP = 32.0


def resize_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] weights of torch's antialiased bilinear resize along one axis
    (interpolate(mode="bilinear", align_corners=False, antialias=True), which torchvision's
    Resize runs on tensors): a triangle filter widened by the scale when shrinking, taps from
    int(centre -+ support + 0.5) clipped to the image, renormalised. It equals plain bilinear
    (border-clamped) when enlarging. Computed in float32 as torch computes it for float input."""
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    support = scale if scale >= 1 else f32(1.0)
    invscale = f32(1.0) / scale if scale >= 1 else f32(1.0)
    weights = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        center = scale * f32(i + 0.5)
        xmin = max(int(center - support + f32(0.5)), 0)
        xmax = min(int(center + support + f32(0.5)), in_size)
        j = np.arange(xmin, xmax)
        w = np.maximum(f32(1.0) - np.abs((j - center + f32(0.5)).astype(f32) * invscale), 0)
        w = w.astype(f32)
        weights[i, xmin:xmax] = w / w.sum(dtype=f32)
    return weights


def to_unit(image) -> np.ndarray:
    """torchvision's ToTensor on an HWC array or a PIL image: uint8 -> /255, float kept as is
    (so float input must already be in [0, 1])."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be [H, W, 3], got {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255)
    return image.astype(np.float32)


def prepare_image(image, image_size: int) -> np.ndarray:
    """An RGB image -> SAM2Transforms' resized [S, S, 3] float32 in [0, 1] (before the
    normalisation): a square stretch, no padding; width first, then height, as torch does."""
    pixels = to_unit(image)
    height, width = pixels.shape[:2]
    rows = resize_weights(height, image_size)
    cols = resize_weights(width, image_size)
    pixels = np.einsum("xw,hwc->hxc", cols, pixels, dtype=np.float32)
    return np.einsum("yh,hxc->yxc", rows, pixels, dtype=np.float32)


@functools.partial(jax.jit, static_argnums=0)
def _encode(graphdef, state, pixels):
    model = nnx.merge(graphdef, state)
    return model.encode(normalize_pixels(pixels))


@functools.partial(jax.jit, static_argnums=(0, 7))
def _decode(graphdef, state, features, points, labels, boxes, masks, options):
    model = nnx.merge(graphdef, state)
    multimask_output, dynamic_multimask = options
    sparse, dense = model.embed_prompts(points, labels, boxes, masks)
    low_res, iou, _, _ = model.decode(
        features,
        sparse,
        dense,
        multimask_output=multimask_output,
        dynamic_multimask=dynamic_multimask,
    )
    return low_res, iou


# Apart from _decode, so that a new image size recompiles only the resize.
_upsample = jax.jit(resize_bilinear, static_argnums=(1, 2))


class Sam2ImagePredictor:
    """Embed an image once with `set_image`, then `predict` masks from prompts, as
    SAM2ImagePredictor does (one image; several prompt sets at once are its batched mode).

    `dynamic_multimask` is the single-mask fallback that build_sam2's default
    (apply_postprocessing=True, eval mode) turns on: a single mask whose stability is below
    0.98 is replaced by the best of the three multimask outputs.
    """

    mask_threshold = MASK_THRESHOLD

    def __init__(self, model: Sam2, dynamic_multimask: bool = True):
        self.model = model
        self.dynamic_multimask = bool(dynamic_multimask)
        self.image_size = model.config.image_size
        self._graphdef, self._state = nnx.split(model)
        self.reset_predictor()

    def reset_predictor(self) -> None:
        self._features = None
        self._orig_hw = None
        self._is_image_set = False

    reset_image = reset_predictor

    @property
    def is_image_set(self) -> bool:
        return self._is_image_set

    def set_image(self, image) -> None:
        """An RGB image: np.ndarray HWC (uint8, or float already in [0, 1]) or a PIL image."""
        self.reset_predictor()
        pixels = prepare_image(image, self.image_size)
        self._orig_hw = tuple(np.asarray(image).shape[:2])
        self._features = _encode(self._graphdef, self._state, jnp.asarray(pixels)[None])
        self._is_image_set = True

    @property
    def features(self) -> dict:
        """{"image_embed" [1, 64, 64, C], "high_res_feats" ([1, 256, 256, C/8], [1, 128, 128,
        C/4])}, SAM2ImagePredictor._features channel-last."""
        return self._features

    def get_image_embedding(self) -> jax.Array:
        """[1, 64, 64, C] (channel-last; SAM2ImagePredictor returns [1, C, 64, 64])."""
        if not self._is_image_set:
            raise RuntimeError(
                "An image must be set with .set_image(...) to generate an embedding."
            )
        return self._features["image_embed"]

    def _transform_coords(self, coords, normalize_coords: bool) -> np.ndarray:
        coords = np.array(coords, dtype=np.float32)
        if normalize_coords:
            h, w = self._orig_hw
            coords[..., 0] = coords[..., 0] / np.float32(w)
            coords[..., 1] = coords[..., 1] / np.float32(h)
        return coords * np.float32(self.image_size)

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks [C, H, W] (float32 0 / 1, or logits with return_logits), IoU predictions [C], low-res logits
        [C, 256, 256] clamped to +-32; with B > 1 prompt sets (points [B, N, 2], boxes [B, 4])
        each gets a leading B axis. Coordinates are pixels of the original image, or in [0, 1]
        with normalize_coords=False."""
        if not self._is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        points = labels = boxes = masks = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be supplied if point_coords is supplied.")
            points = self._transform_coords(point_coords, normalize_coords)
            labels = np.asarray(point_labels, np.int32)
            if points.ndim == 2:
                points, labels = points[None], labels[None]
            points, labels = jnp.asarray(points), jnp.asarray(labels)
        if box is not None:
            corners = self._transform_coords(np.asarray(box).reshape(-1, 2, 2), normalize_coords)
            boxes = jnp.asarray(corners.reshape(-1, 4))
        if mask_input is not None:
            masks = np.asarray(mask_input, np.float32)
            if masks.ndim == 3:
                masks = masks[None]
            masks = jnp.asarray(masks[:, 0])
        low_res, iou = _decode(
            self._graphdef,
            self._state,
            self._features,
            points,
            labels,
            boxes,
            masks,
            (bool(multimask_output), self.dynamic_multimask),
        )
        full = np.asarray(_upsample(low_res.astype(jnp.float32), *self._orig_hw))
        if not return_logits:  # float 0 / 1, as SAM2ImagePredictor returns them
            full = (full > self.mask_threshold).astype(np.float32)
        low_res = np.clip(np.asarray(low_res, np.float32), -LOW_RES_CLAMP, LOW_RES_CLAMP)
        iou = np.asarray(iou, np.float32)
        if low_res.shape[0] == 1:  # torch's squeeze(0): one prompt set drops the batch axis
            full, iou, low_res = full[0], iou[0], low_res[0]
        return full, iou, low_res
