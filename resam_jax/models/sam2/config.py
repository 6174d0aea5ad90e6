"""SAM 2 / 2.1 image-mode configurations: the Hiera sizes t, s, b+ and l of Meta's release, and a
small one for tests."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

# As SAM's: the attention implementations and the remat options (nothing, whole blocks, or a
# jax.checkpoint policy naming what a block keeps for the backward pass; from the first LoRA
# block on), and their checks.
from resam_jax.models.sam.architecture import (  # noqa: F401
    ATTENTION_IMPLEMENTATIONS,
    REMAT_OPTIONS,
    check_options,
)

LORA_TARGETS = ("q", "k", "v")  # the thirds of Hiera's fused qkv projection


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One Hiera block as Meta's constructor lays it out."""

    dim: int
    dim_out: int
    num_heads: int
    window_size: int  # 0: global attention
    q_pool: bool  # max-pools q (and the residual) 2x2: the first block of stages 2..4


@dataclasses.dataclass(frozen=True)
class Sam2Config:
    """Hyper-parameters of a SAM 2 image model; the defaults are Hiera-b+ (Meta's Hiera defaults).

    2.0 and 2.1 checkpoints share these: their differences are video-only.
    """

    model_type: str = "hiera_b+"
    image_size: int = 1024
    embed_dim: int = 112
    num_heads: int = 2
    stages: tuple[int, ...] = (2, 3, 16, 3)
    global_att_blocks: tuple[int, ...] = (12, 16, 20)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    pos_embed_bkg_size: tuple[int, int] = (14, 14)  # window_pos_embed_bkg_spatial_size
    q_pool: int = 3
    mlp_ratio: float = 4.0
    d_model: int = 256  # neck width = prompt embedding width
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    # build_sam2(apply_postprocessing=True): the single-mask fallback's thresholds. Whether the
    # fallback runs is a call argument (`dynamic_multimask`), not a mode of the model.
    stability_delta: float = 0.05
    stability_thresh: float = 0.98
    # Computation dtype ("float32" or "bfloat16"); parameters stay float32.
    dtype: str = "float32"
    # Hiera attention: "reference" materialises every [queries, keys] matrix; "chunked" runs the
    # global blocks over blocks of at most attention_chunk_size queries (FlashAttention's
    # backward) and the windowed blocks a cache-sized group of windows at a time; "dot_product"
    # is jax.nn.dot_product_attention in every block (cuDNN's fused kernel on GPU; on CPU, XLA
    # materialises the scores as "reference" does).
    attention: str = "reference"
    attention_chunk_size: int = 1024
    # "blocks": each Hiera block keeps only its input for the backward pass.
    remat: str = "none"
    # LoRA on the Hiera attention's fused qkv (ReSAM): rank (None: no LoRA), first block (that
    # block to the last get it), and which of q, k, v are updated. Each update is x @ A @ B with
    # A [dim, r] and B [r, dim_out], dim_out the block's OUTPUT width (a q-pool block widens),
    # B zero-initialised, no scaling (ReSAM's LoRA_Sam).
    lora_rank: int | None = None
    lora_start_layer: int | None = None
    lora_targets: tuple[str, ...] = ("q", "v")

    def __post_init__(self):
        if not self.lora_targets or set(self.lora_targets) - set(LORA_TARGETS):
            raise ValueError(
                f"Sam2Config.lora_targets={self.lora_targets!r}; expected some of {LORA_TARGETS}"
            )
        if len(self.stages) != len(self.window_spec):
            raise ValueError(
                f"Sam2Config.stages {self.stages} and window_spec {self.window_spec} must have "
                "the same length (one window per stage)"
            )
        if not 0 <= self.q_pool < len(self.stages):
            raise ValueError(
                f"Sam2Config.q_pool={self.q_pool} must be in 0..{len(self.stages) - 1}"
            )
        grid = self.image_size // 4
        if self.image_size % (4 * 2**self.q_pool) or grid % self.window_spec[0]:
            raise ValueError(
                f"Sam2Config.image_size={self.image_size}: the token grid (image_size / 4) must be "
                f"divisible by 2**q_pool={2**self.q_pool} and by window_spec[0]={self.window_spec[0]}"
            )
        bad = [i for i in self.global_att_blocks if not 0 <= i < self.depth]
        if bad:
            raise ValueError(
                f"Sam2Config.global_att_blocks has blocks {bad} outside 0..{self.depth - 1}"
            )
        if (
            self.lora_rank
            and self.lora_start_layer is not None
            and not (0 <= self.lora_start_layer < self.depth)
        ):
            raise ValueError(
                f"Sam2Config.lora_start_layer={self.lora_start_layer} must be in "
                f"0..{self.depth - 1} (or None for no LoRA)"
            )
        check_options(self)

    @property
    def depth(self) -> int:
        return sum(self.stages)

    def lora_blocks(self) -> range:
        """The Hiera blocks with LoRA."""
        if not self.lora_rank or self.lora_start_layer is None:
            return range(0)
        return range(self.lora_start_layer, self.depth)

    @property
    def stage_ends(self) -> tuple[int, ...]:
        return tuple(sum(self.stages[: i + 1]) - 1 for i in range(len(self.stages)))

    @property
    def q_pool_blocks(self) -> tuple[int, ...]:
        return tuple(end + 1 for end in self.stage_ends[:-1])[: self.q_pool]

    def blocks(self) -> tuple[BlockSpec, ...]:
        """Every Hiera block, as hieradet.Hiera builds them: a stage's first block widens (dim
        and heads x2) and still uses the previous stage's window."""
        specs, dim, heads, stage = [], self.embed_dim, self.num_heads, 0
        for i in range(self.depth):
            window = 0 if i in self.global_att_blocks else self.window_spec[stage]
            dim_out = dim
            if i - 1 in self.stage_ends:
                dim_out, heads, stage = 2 * dim, 2 * heads, stage + 1
            specs.append(BlockSpec(dim, dim_out, heads, window, i in self.q_pool_blocks))
            dim = dim_out
        return tuple(specs)

    @property
    def channel_list(self) -> tuple[int, ...]:
        """Width of each stage's output, deepest first (FpnNeck.backbone_channel_list)."""
        blocks = self.blocks()
        return tuple(blocks[end].dim_out for end in reversed(self.stage_ends))

    @property
    def embed_size(self) -> int:
        """Side of the image embedding grid (64 for 1024 inputs; backbone stride 16)."""
        return self.image_size // 16

    @property
    def low_res_size(self) -> int:
        """Side of the mask decoder's logits (256 for 1024 inputs)."""
        return 4 * self.embed_size

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)


# configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml over the Hiera defaults (= b+).
_SIZES = {
    "hiera_t": dict(
        embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
        pos_embed_bkg_size=(7, 7),
    ),
    "hiera_s": dict(
        embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13),
        pos_embed_bkg_size=(7, 7),
    ),
    "hiera_b+": dict(),
    "hiera_l": dict(
        embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43),
        window_spec=(8, 4, 16, 8), pos_embed_bkg_size=(7, 7),
    ),
    # Not a release: every structural case (q-pool blocks, window padding at stages 3 and 4, a
    # global block, 7 -> 64 bicubic) at 256 px, for tests and CI runs.
    "hiera_test": dict(
        image_size=256, embed_dim=16, num_heads=1, stages=(1, 2, 3, 2), global_att_blocks=(4,),
        pos_embed_bkg_size=(7, 7),
    ),
}  # fmt: skip
MODEL_TYPES = tuple(_SIZES)
# Meta's released sizes (sam2.1_hiera_{tiny,small,base_plus,large}.pt).
RELEASED_TYPES = ("hiera_t", "hiera_s", "hiera_b+", "hiera_l")
CHECKPOINT_NAMES = {
    "hiera_t": "tiny",
    "hiera_s": "small",
    "hiera_b+": "base_plus",
    "hiera_l": "large",
}


def sam2_config(model_type: str, **overrides) -> Sam2Config:
    if model_type not in _SIZES:
        raise ValueError(f"unknown SAM 2 model_type {model_type!r}; expected one of {MODEL_TYPES}")
    return Sam2Config(**{"model_type": model_type, **_SIZES[model_type], **overrides})
