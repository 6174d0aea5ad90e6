"""SAM's prompt encoder: random-Fourier positions of points and box corners, and mask inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from resam_jax.models.sam.architecture import SamConfig
from resam_jax.models.sam.layers import Buffer, gelu, layer_norm

# Point-type rows of `point_embeddings`: SAM's label 0 and 1, then the box corners.
NEGATIVE, POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = range(4)
# Label of a padding point: it carries the "not a point" embedding and no position.
PAD_LABEL = -1


class PositionEmbeddingRandom(nnx.Module):
    """Fourier features of coordinates in [0, 1] with a fixed Gaussian projection."""

    def __init__(self, num_pos_feats: int, *, rngs: nnx.Rngs):
        self.gaussian_matrix = Buffer(jax.random.normal(rngs.params(), (2, num_pos_feats)))

    def encode(self, coords: jax.Array) -> jax.Array:
        """[..., 2] in [0, 1] -> [..., 2 * num_pos_feats]."""
        coords = (2 * coords - 1) @ self.gaussian_matrix[...]
        coords = 2 * np.pi * coords
        return jnp.concatenate([jnp.sin(coords), jnp.cos(coords)], axis=-1)

    def dense(self, size: int) -> jax.Array:
        """Encoding of every cell centre of a size x size grid: [size, size, C]."""
        centres = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size
        x, y = jnp.meshgrid(centres, centres, indexing="xy")
        return self.encode(jnp.stack([x, y], axis=-1))


class PromptEncoder(nnx.Module):
    """Sparse (points, boxes) and dense (mask) prompt embeddings."""

    def __init__(self, config: SamConfig, *, rngs: nnx.Rngs):
        dim, dtype = config.prompt_embed_dim, config.compute_dtype
        self.image_size = config.image_size
        self.embed_size = config.embed_size
        self.pe_layer = PositionEmbeddingRandom(dim // 2, rngs=rngs)
        embed_init = jax.nn.initializers.normal(1.0)
        self.point_embeddings = nnx.Param(embed_init(rngs.params(), (4, dim)))
        self.not_a_point_embed = nnx.Param(embed_init(rngs.params(), (dim,)))
        self.no_mask_embed = nnx.Param(embed_init(rngs.params(), (dim,)))
        chans = config.mask_in_chans
        self.mask_conv1 = nnx.Conv(
            1, chans // 4, (2, 2), strides=2, padding="VALID", dtype=dtype, rngs=rngs
        )
        self.mask_norm1 = layer_norm(chans // 4, 1e-6, dtype, rngs)
        self.mask_conv2 = nnx.Conv(
            chans // 4, chans, (2, 2), strides=2, padding="VALID", dtype=dtype, rngs=rngs
        )
        self.mask_norm2 = layer_norm(chans, 1e-6, dtype, rngs)
        self.mask_conv3 = nnx.Conv(chans, dim, (1, 1), dtype=dtype, rngs=rngs)

    def dense_pe(self) -> jax.Array:
        """Positional encoding of the image embedding grid: [E, E, C]."""
        return self.pe_layer.dense(self.embed_size)

    def _embed_coords(self, coords: jax.Array) -> jax.Array:
        # +0.5: SAM's coordinates address pixel centres.
        return self.pe_layer.encode((coords + 0.5) / self.image_size)

    def embed_points(self, points: jax.Array, labels: jax.Array) -> jax.Array:
        """Points [n, P, 2] (x, y input-frame pixels) with labels [n, P] -> [n, P, C]."""
        embedding = self._embed_coords(points)
        table = self.point_embeddings[...]
        labels = labels[..., None]
        embedding = jnp.where(labels == PAD_LABEL, self.not_a_point_embed[...], embedding)
        embedding = embedding + jnp.where(labels == 0, table[NEGATIVE], 0.0)
        return embedding + jnp.where(labels == 1, table[POSITIVE], 0.0)

    def embed_boxes(self, boxes: jax.Array) -> jax.Array:
        """Boxes [n, 4] xyxy -> corner embeddings [n, 2, C]."""
        corners = self._embed_coords(boxes.reshape(-1, 2, 2))
        return corners + self.point_embeddings[...][jnp.array([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT])]

    def embed_masks(self, masks: jax.Array) -> jax.Array:
        """Mask logits [n, 4E, 4E] -> [n, E, E, C]."""
        x = gelu(self.mask_norm1(self.mask_conv1(masks[..., None])))
        x = gelu(self.mask_norm2(self.mask_conv2(x)))
        return self.mask_conv3(x)

    def __call__(
        self,
        points: jax.Array | None,
        labels: jax.Array | None,
        boxes: jax.Array | None,
        masks: jax.Array | None,
    ) -> tuple[jax.Array, jax.Array]:
        """Returns sparse [n, T, C] and dense [n, E, E, C] embeddings for n prompts."""
        n = next(p.shape[0] for p in (points, boxes, masks) if p is not None)
        sparse = []
        if points is not None:
            if boxes is None:
                # SAM appends one padding point when there is no box; the
                # decoder's output depends on it, so parity requires it too.
                points = jnp.pad(points, ((0, 0), (0, 1), (0, 0)))
                labels = jnp.pad(labels, ((0, 0), (0, 1)), constant_values=PAD_LABEL)
            sparse.append(self.embed_points(points, labels))
        if boxes is not None:
            sparse.append(self.embed_boxes(boxes))
        sparse = (
            jnp.concatenate(sparse, axis=1)
            if sparse
            else jnp.zeros((n, 0, self.not_a_point_embed.shape[0]))
        )
        if masks is not None:
            dense = self.embed_masks(masks)
        else:
            dense = jnp.broadcast_to(
                self.no_mask_embed[...],
                (n, self.embed_size, self.embed_size, self.no_mask_embed.shape[0]),
            )
        return sparse, dense
