"""SAM model configurations (ViT-B/L/H as released by Meta, plus a tiny one for tests and demos
and a small one pretrained here on remote-sensing images)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

ATTENTION_IMPLEMENTATIONS = ("reference", "chunked", "dot_product")
# "blocks" is jax.checkpoint's own default (save nothing but the block input); the others name
# jax.checkpoint_policies: matmul outputs without batch dimensions (the projections and MLPs,
# not the attention scores), or every matmul output.
REMAT_OPTIONS = ("none", "blocks", "dots_with_no_batch_dims_saveable", "dots_saveable")

DTYPES = ("float32", "bfloat16")


def check_options(config) -> None:
    """The fields both families' configs share (SamConfig, Sam2Config): the computation dtype
    and the memory options; a ValueError naming the field otherwise."""
    name = type(config).__name__
    if config.dtype not in DTYPES:
        raise ValueError(f"{name}.dtype={config.dtype!r}; expected 'float32' or 'bfloat16'")
    if config.attention not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"{name}.attention={config.attention!r}; expected one of {ATTENTION_IMPLEMENTATIONS}"
        )
    if config.attention_chunk_size < 1:
        raise ValueError(
            f"{name}.attention_chunk_size={config.attention_chunk_size} must be positive"
        )
    if config.remat not in REMAT_OPTIONS:
        raise ValueError(f"{name}.remat={config.remat!r}; expected one of {REMAT_OPTIONS}")


@dataclasses.dataclass(frozen=True)
class SamConfig:
    """Hyper-parameters of a Segment Anything model.

    The defaults are SAM ViT-B; `sam_config` gives the other published sizes.
    """

    model_type: str = "vit_b"
    image_size: int = 1024
    patch_size: int = 16
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    num_multimask_outputs: int = 3
    # LoRA on the q and v parts of the fused qkv of encoder blocks
    # lora_start_layer..depth-1; None disables LoRA entirely.
    lora_rank: int = 4
    lora_start_layer: int | None = None
    # Computation dtype ("float32" or "bfloat16"); parameters stay float32.
    dtype: str = "float32"
    # How encoder attention is computed (ATTENTION_IMPLEMENTATIONS): "reference" materialises
    # the [tokens, tokens] matrix per head; "chunked" runs over blocks of at most
    # attention_chunk_size queries (whole rows of the token grid), recomputing each block's
    # scores in the backward pass, so no global block holds more than one block of scores;
    # "dot_product" is jax.nn.dot_product_attention with the relative-position bias as `bias`
    # (cuDNN on GPU; the bias itself is [tokens, tokens]). All three are the same function.
    # "chunked" by 128 queries is the default: on CPU each block of scores (12 x 128 x 4096 in
    # ViT-B) stays in cache, so it runs faster than "reference", and it keeps the train step's
    # attention temporaries small (docs/benchmarks.md).
    attention: str = "chunked"
    attention_chunk_size: int = 128
    # Rematerialisation of the encoder blocks that carry gradients (lora_blocks()), REMAT_OPTIONS:
    # "none"; "blocks" saves only each block's input and recomputes the rest in the backward
    # pass; a jax.checkpoint_policies name saves what that policy saves.
    remat: str = "none"

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(
                f"SamConfig.image_size={self.image_size} must be a multiple of "
                f"patch_size={self.patch_size}"
            )
        if self.encoder_embed_dim % self.encoder_num_heads:
            raise ValueError(
                f"SamConfig.encoder_embed_dim={self.encoder_embed_dim} must be a "
                f"multiple of encoder_num_heads={self.encoder_num_heads}"
            )
        bad = [i for i in self.encoder_global_attn_indexes if not 0 <= i < self.encoder_depth]
        if bad:
            raise ValueError(
                f"SamConfig.encoder_global_attn_indexes has blocks {bad} outside "
                f"0..{self.encoder_depth - 1}"
            )
        if self.lora_start_layer is not None and not (
            0 <= self.lora_start_layer < self.encoder_depth
        ):
            raise ValueError(
                f"SamConfig.lora_start_layer={self.lora_start_layer} must be in "
                f"0..{self.encoder_depth - 1} (or None for no LoRA)"
            )
        check_options(self)

    @property
    def embed_size(self) -> int:
        """Side of the image embedding grid (64 for 1024 inputs)."""
        return self.image_size // self.patch_size

    @property
    def low_res_size(self) -> int:
        """Side of the mask decoder's logits (256 for 1024 inputs)."""
        return 4 * self.embed_size

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    def lora_blocks(self) -> range:
        if self.lora_start_layer is None:
            return range(0)
        return range(self.lora_start_layer, self.encoder_depth)


_ENCODERS = {
    "vit_b": dict(
        encoder_embed_dim=768,
        encoder_depth=12,
        encoder_num_heads=12,
        encoder_global_attn_indexes=(2, 5, 8, 11),
    ),
    "vit_l": dict(
        encoder_embed_dim=1024,
        encoder_depth=24,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(5, 11, 17, 23),
    ),
    "vit_h": dict(
        encoder_embed_dim=1280,
        encoder_depth=32,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(7, 15, 23, 31),
    ),
    # Small enough to run a train step in a second on a laptop CPU, yet it
    # keeps every mechanism: windowed attention with padding (16 % 6 != 0),
    # a global block, multimask outputs, the mask-input downscaler.
    "tiny": dict(
        image_size=256,
        encoder_embed_dim=32,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(1,),
        window_size=6,
        prompt_embed_dim=32,
        mask_in_chans=8,
        decoder_num_heads=2,
        decoder_mlp_dim=64,
        iou_head_hidden_dim=32,
    ),
    # A small promptable SAM trained from scratch on remote-sensing images by
    # tools/pretrain_sam.py (resam_jax/assets/sam_small_nwpu), standing in for Meta's SAM
    # where it cannot be downloaded. 384 inputs with 16 px patches give a 24 x 24 token grid
    # (NWPU's ~1000 x 700 images shrink 2.6x: 15-40 px vehicles stay 6-15 px, about one
    # token); windows of 8 tile it exactly; two of the four blocks attend globally. The
    # decoder keeps SAM's structure at half SAM's width.
    "small": dict(
        image_size=384,
        encoder_embed_dim=128,
        encoder_depth=4,
        encoder_num_heads=4,
        encoder_global_attn_indexes=(1, 3),
        window_size=8,
        prompt_embed_dim=128,
        mask_in_chans=16,
        decoder_num_heads=4,
        decoder_mlp_dim=512,
        iou_head_hidden_dim=128,
    ),
}

MODEL_TYPES = tuple(_ENCODERS)


def sam_config(model_type: str, **overrides) -> SamConfig:
    """The configuration of a named SAM model, with optional field overrides."""
    if model_type not in _ENCODERS:
        raise ValueError(f"unknown SAM model type {model_type!r}; expected one of {MODEL_TYPES}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(SamConfig)}
    if unknown:
        raise ValueError(f"unknown SamConfig fields {sorted(unknown)}")
    return SamConfig(model_type=model_type, **{**_ENCODERS[model_type], **overrides})
