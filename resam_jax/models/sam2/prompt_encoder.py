"""SAM 2's prompt encoder (modeling/sam/prompt_encoder.py): random-Fourier positions of points
with labels -1 (padding), 0, 1, 2 (box top-left) and 3 (box bottom-right), and mask inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from resam_jax.models.sam2.config import Sam2Config
from resam_jax.models.sam2.layers import Buffer, gelu, layer_norm

PAD_LABEL = -1
# Rows of `point_embeddings`: negative and positive clicks, then the box corners.
NEGATIVE, POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = range(4)


class PromptEncoder(nnx.Module):
    """Sparse (points, boxes) and dense (mask) prompt embeddings, NHWC."""

    def __init__(self, config: Sam2Config, *, rngs: nnx.Rngs):
        dim, dtype = config.d_model, config.compute_dtype
        self.image_size = config.image_size
        self.embed_size = config.embed_size
        self.gaussian_matrix = Buffer(jax.random.normal(rngs.params(), (2, dim // 2)))
        embed_init = jax.nn.initializers.normal(1.0)
        self.point_embeddings = nnx.List(
            [nnx.Param(embed_init(rngs.params(), (dim,))) for _ in range(4)]
        )
        self.not_a_point_embed = nnx.Param(embed_init(rngs.params(), (dim,)))
        self.no_mask_embed = nnx.Param(embed_init(rngs.params(), (dim,)))
        chans = config.mask_in_chans
        conv = dict(strides=2, padding="VALID", dtype=dtype, rngs=rngs)
        self.mask_conv1 = nnx.Conv(1, chans // 4, (2, 2), **conv)
        self.mask_norm1 = layer_norm(chans // 4, 1e-6, dtype, rngs)
        self.mask_conv2 = nnx.Conv(chans // 4, chans, (2, 2), **conv)
        self.mask_norm2 = layer_norm(chans, 1e-6, dtype, rngs)
        self.mask_conv3 = nnx.Conv(chans, dim, (1, 1), dtype=dtype, rngs=rngs)

    def _fourier(self, coords: jax.Array) -> jax.Array:
        """[..., 2] in [0, 1] -> [..., C]."""
        coords = 2 * np.pi * ((2 * coords - 1) @ self.gaussian_matrix[...])
        return jnp.concatenate([jnp.sin(coords), jnp.cos(coords)], axis=-1)

    def dense_pe(self) -> jax.Array:
        """Positional encoding of the image-embedding grid: [E, E, C] (get_dense_pe)."""
        centres = (jnp.arange(self.embed_size, dtype=jnp.float32) + 0.5) / self.embed_size
        x, y = jnp.meshgrid(centres, centres, indexing="xy")
        return self._fourier(jnp.stack([x, y], axis=-1))

    def _embed_coords(self, coords: jax.Array) -> jax.Array:
        # +0.5: coordinates address pixel centres.
        return self._fourier((coords + 0.5) / self.image_size)

    def embed_points(self, points: jax.Array, labels: jax.Array) -> jax.Array:
        """Points [n, P, 2] (x, y in input pixels) with labels [n, P] in -1..3 -> [n, P, C]."""
        labels = labels[..., None]
        embedding = jnp.where(
            labels == PAD_LABEL, self.not_a_point_embed[...], self._embed_coords(points)
        )
        for label, row in enumerate(self.point_embeddings):
            embedding = embedding + jnp.where(labels == label, row[...], 0.0)
        return embedding

    def embed_boxes(self, boxes: jax.Array) -> jax.Array:
        """Boxes [n, 4] xyxy -> corner embeddings [n, 2, C]."""
        corners = self._embed_coords(boxes.reshape(-1, 2, 2))
        rows = jnp.stack(
            [self.point_embeddings[BOX_TOP_LEFT][...], self.point_embeddings[BOX_BOTTOM_RIGHT][...]]
        )
        return corners + rows

    def embed_masks(self, masks: jax.Array) -> jax.Array:
        """Mask logits [n, 4E, 4E] -> [n, E, E, C]."""
        x = gelu(self.mask_norm1(self.mask_conv1(masks[..., None])))
        x = gelu(self.mask_norm2(self.mask_conv2(x)))
        return self.mask_conv3(x)

    def __call__(
        self,
        points: jax.Array | None,
        labels: jax.Array | None,
        boxes: jax.Array | None = None,
        masks: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Sparse [n, T, C] and dense [n, E, E, C] embeddings, as PromptEncoder.forward: points
        get one padding token when there is no `boxes` argument. SAM2ImagePredictor passes a
        box as two corner points (labels 2, 3) instead, see `model.box_as_points`."""
        n = next((p.shape[0] for p in (points, boxes, masks) if p is not None), 1)
        dim = self.no_mask_embed.shape[0]
        sparse = [jnp.zeros((n, 0, dim))]
        if points is not None:
            if boxes is None:
                points = jnp.pad(points, ((0, 0), (0, 1), (0, 0)))
                labels = jnp.pad(labels, ((0, 0), (0, 1)), constant_values=PAD_LABEL)
            sparse.append(self.embed_points(points, labels))
        if boxes is not None:
            sparse.append(self.embed_boxes(boxes))
        if masks is not None:
            dense = self.embed_masks(masks)
        else:
            dense = jnp.broadcast_to(
                self.no_mask_embed[...], (n, self.embed_size, self.embed_size, dim)
            )
        return jnp.concatenate(sparse, axis=1), dense
