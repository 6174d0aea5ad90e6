"""The JAX counterpart of `segment_anything.SamPredictor`: same preprocessing, arguments and outputs."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from resam_jax.models.sam import PIXEL_NORMS, Sam, normalize_pixels, postprocess_masks
from resam_jax.transforms import resize_longest_side, scale_coords


@functools.partial(jax.jit, static_argnums=(0, 4))
def _encode(graphdef, state, image, content_mask, pixel_norm):
    model = nnx.merge(graphdef, state)
    return model.encode(normalize_pixels(image, content_mask, pixel_norm))


@functools.partial(jax.jit, static_argnums=(0, 7))
def _decode(graphdef, state, embedding, points, labels, boxes, mask_input, multimask):
    model = nnx.merge(graphdef, state)
    low_res, iou = model.decode(embedding, points, labels, boxes, mask_input, multimask)
    return low_res[0, 0], iou[0, 0]  # the one image, the one prompt


def prepare_image(image: np.ndarray, image_size: int) -> tuple[np.ndarray, np.ndarray, tuple]:
    """uint8 RGB [H, W, 3] -> SAM's input: the image resized (longest side `image_size`) and
    padded bottom-right [S, S, 3], its content mask [S, S], and the resized size (h, w)."""
    resized = resize_longest_side(np.ascontiguousarray(image), image_size)
    h, w = resized.shape[:2]
    padded = np.zeros((image_size, image_size, 3), np.uint8)
    padded[:h, :w] = resized
    content = np.zeros((image_size, image_size), bool)
    content[:h, :w] = True
    return padded, content, (h, w)


# Apart from _decode so that an image of a new size recompiles only these resizes, not the
# mask decoder (seconds on a CPU, for every image of a folder of mixed sizes).
_postprocess = jax.jit(postprocess_masks, static_argnums=(1, 2, 3))


class SamPredictor:
    """Embed an image once with `set_image`, then `predict` masks from prompts.

    Prompts and outputs are in original-image coordinates; images are RGB
    uint8 [H, W, 3], resized with SAM's ResizeLongestSide and padded
    bottom-right, as Meta's predictor does. `pixel_norm` is the pixel input the
    weights expect: "sam" (Meta's SAM) or "unit" ([0, 1], what ReSAM adapts
    to by default, model.pixel_norm).
    """

    def __init__(self, model: Sam, pixel_norm: str = "sam"):
        if pixel_norm not in PIXEL_NORMS:
            raise ValueError(f"pixel_norm={pixel_norm!r}; expected one of {PIXEL_NORMS}")
        self.model = model
        self.pixel_norm = pixel_norm
        self.image_size = model.config.image_size
        self._graphdef, self._state = nnx.split(model)
        self.reset_image()

    def reset_image(self) -> None:
        self.features = None
        self.original_size = None
        self.input_size = None

    @property
    def is_image_set(self) -> bool:
        return self.features is not None

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
        if image_format == "BGR":
            image = image[..., ::-1]
        padded, content, input_size = prepare_image(image, self.image_size)
        self.features = _encode(
            self._graphdef, self._state, padded[None], content[None], self.pixel_norm
        )
        self.original_size = tuple(image.shape[:2])
        self.input_size = input_size

    def get_image_embedding(self) -> jax.Array:
        if not self.is_image_set:
            raise RuntimeError(
                "An image must be set with .set_image(...) to generate an embedding."
            )
        return self.features

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks [M, H, W] (bool, or float logits), IoU predictions [M], low-res logits [M, L, L]."""
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        points = labels = boxes = masks = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be supplied if point_coords is supplied.")
            points = scale_coords(
                np.asarray(point_coords).reshape(-1, 2), self.original_size, self.image_size
            )
            points = jnp.asarray(points, jnp.float32)[None, None]
            labels = jnp.asarray(np.asarray(point_labels).reshape(-1), jnp.int32)[None, None]
        if box is not None:
            corners = scale_coords(
                np.asarray(box).reshape(2, 2), self.original_size, self.image_size
            )
            boxes = jnp.asarray(corners.reshape(1, 1, 4), jnp.float32)
        if mask_input is not None:
            masks = jnp.asarray(mask_input, jnp.float32).reshape(1, 1, *np.shape(mask_input)[-2:])
        low_res, iou = _decode(
            self._graphdef,
            self._state,
            self.features,
            points,
            labels,
            boxes,
            masks,
            bool(multimask_output),
        )
        full = np.asarray(
            _postprocess(low_res, self.image_size, self.input_size, self.original_size)
        )
        if not return_logits:
            full = full > Sam.mask_threshold
        return full, np.asarray(iou), np.asarray(low_res)
