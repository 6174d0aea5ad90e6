"""The PyTorch step the benchmarks compare with, built as the public ReSAM code builds it; used by
benchmarks/train_step.py (CPU) and benchmarks/device_check.py (the accelerator).

segment-anything's Sam with the public code's LoRA (rank 4 on q and v of the fused qkv of
blocks >= 6, only LoRA trainable, torch Adam with weight decay 1e-4) and the public code's step:
the weak view encoded without gradients for Refine, AGAIN without gradients for Requery, the
strong view with gradients; focal x20 + dice + IoU-MSE + SSA, backward, Adam step. The losses
are vectorised over instances and every instance keeps its slot (the public code loops in
Python and drops empty ones), so the baseline does the same work per step whatever the masks.

The same step on SAM 2.1 (`torch_sam2`, `public_train_step(..., family="sam2")`): the public
code has no working SAM 2 path (docs/sam2.md), so its SAM step is restated on `sam2`'s image
model as SAM2ImagePredictor runs it: ImageNet-normalised pixels (zero padding after the
normalisation, as resam-jax's pixel_norm "sam"), forward_image + no_mem_embed + the
high-resolution features conv_s0 / conv_s1, a box as two corner points labelled 2 and 3,
single-mask output in train mode; LoRA of rank 4 on q and v of Hiera's fused qkv (A: dim ->
4, B: 4 -> the block's output width) from block depth // 2 (configs/*_sam2.py).

The model carries its library's random initialisation (torch seed 0) with its mask logits
multiplied by benchmarks.jax_step.MASK_LOGIT_SCALE, as the resam-jax side's, so that its
teacher keeps pseudo-labels and the step trains.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from benchmarks.jax_step import MASK_LOGIT_SCALE

if TYPE_CHECKING:
    import torch

    from resam_jax.models.sam import SamConfig
    from resam_jax.models.sam2 import Sam2Config

LORA_RANK, LORA_START_LAYER = 4, 6
REFINE_THRESHOLD, FOCAL_ALPHA, FOCAL_GAMMA = 0.3, 0.8, 2.0
# SAM2Transforms' normalisation (ImageNet mean / std on [0, 1]).
SAM2_PIXEL_MEAN, SAM2_PIXEL_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def torch_sam(config: SamConfig, seed: int = 0) -> torch.nn.Module:
    """segment-anything's Sam at `config`'s sizes with its own random initialisation (seed):
    for vit_b/l/h the modules sam_model_registry builds, at any size the same constructors."""
    import torch
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    torch.manual_seed(seed)
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=config.encoder_depth,
            embed_dim=config.encoder_embed_dim,
            img_size=config.image_size,
            mlp_ratio=config.mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=config.encoder_num_heads,
            patch_size=config.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=config.encoder_global_attn_indexes,
            window_size=config.window_size,
            out_chans=config.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(config.embed_size, config.embed_size),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=config.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=config.decoder_num_heads,
            ),
            transformer_dim=config.prompt_embed_dim,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
    )


def torch_sam2(config: Sam2Config, seed: int = 0) -> torch.nn.Module:
    """`sam2`'s SAM2Base in image mode at `config`'s sizes, built with the settings of the sam2.1
    yaml files (Hiera, FPN neck with nearest top-down on levels 2-3, scalp 1, high-resolution
    features, object-score head, sigmoid IoU) and its own random initialisation (seed). The
    video modules (memory attention, memory encoder) are left out: the image path the
    predictor and the step run does not call them, and resam-jax's model has none."""
    import torch
    from sam2.modeling.backbones.hieradet import Hiera
    from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine
    from sam2.modeling.sam2_base import SAM2Base

    torch.manual_seed(seed)
    trunk = Hiera(
        embed_dim=config.embed_dim,
        num_heads=config.num_heads,
        stages=config.stages,
        global_att_blocks=config.global_att_blocks,
        window_spec=config.window_spec,
        window_pos_embed_bkg_spatial_size=config.pos_embed_bkg_size,
    )
    neck = FpnNeck(
        position_encoding=PositionEmbeddingSine(
            num_pos_feats=config.d_model, normalize=True, temperature=10000
        ),
        d_model=config.d_model,
        backbone_channel_list=trunk.channel_list,
        fpn_top_down_levels=[2, 3],
        fpn_interp_model="nearest",
    )
    return SAM2Base(
        image_encoder=ImageEncoder(trunk=trunk, neck=neck, scalp=1),
        memory_attention=None,
        memory_encoder=None,
        image_size=config.image_size,
        use_high_res_features_in_sam=True,
        multimask_output_in_sam=True,
        iou_prediction_use_sigmoid=True,
        directly_add_no_mem_embed=True,
        pred_obj_scores=True,
        pred_obj_scores_mlp=True,
        use_multimask_token_for_obj_ptr=True,
        sam_mask_decoder_extra_args=dict(
            dynamic_multimask_via_stability=True,
            dynamic_multimask_stability_delta=config.stability_delta,
            dynamic_multimask_stability_thresh=config.stability_thresh,
        ),
    )


def perturb_(
    module: torch.nn.Module,
    seed: int = 0,
    *,
    position_scale: float = 0.1,
    positions: tuple[str, ...] = ("rel_pos", "pos_embed"),
    keep: tuple[str, ...] = ("pixel_mean", "pixel_std"),
) -> None:
    """Noise on every floating tensor of a random torch model, in place, so that none keeps the
    symmetric value its initialisation gave it (relative positions 0, norm scales 1) and a
    weight mapped to the wrong place changes the output, as tests/sam_reference.py does.

    Tensors named with one of `positions` become N(0, position_scale^2); 1-D weights (norm
    scales) 1 + N(0, 0.2^2); other 1-D tensors (biases) N(0, 0.1^2); the rest get + N(0, 0.01^2).
    Tensors whose name ends with one of `keep` stay as they are.
    """
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if not tensor.is_floating_point() or name.endswith(keep):
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if any(part in name for part in positions):
                tensor.copy_(position_scale * noise)
            elif tensor.ndim == 1 and name.endswith("weight"):
                tensor.copy_(1.0 + 0.2 * noise)
            elif tensor.ndim == 1:
                tensor.copy_(0.1 * noise)
            else:
                tensor.add_(0.01 * noise)


def sam2_features(sam2: torch.nn.Module, images: torch.Tensor) -> dict:
    """SAM2ImagePredictor.set_image's features of normalised NCHW images: forward_image (the
    trunk, the neck, conv_s0 / conv_s1 on levels 0 and 1), no_mem_embed added to level 2;
    {"image_embed" [B, C, E, E], "high_res_feats" [[B, C/8, 4E, 4E], [B, C/4, 2E, 2E]]}."""
    _, features, _, sizes = sam2._prepare_backbone_features(sam2.forward_image(images))
    features[-1] = features[-1] + sam2.no_mem_embed
    b = images.shape[0]
    maps = [f.permute(1, 2, 0).reshape(b, -1, *s) for f, s in zip(features, sizes)]
    return {"image_embed": maps[-1], "high_res_feats": maps[:-1]}


def mask_decoder_of(sam: torch.nn.Module) -> torch.nn.Module:
    """The mask decoder of segment-anything's Sam or of sam2's SAM2Base."""
    return sam.sam_mask_decoder if hasattr(sam, "sam_mask_decoder") else sam.mask_decoder


def scale_mask_logits_(sam: torch.nn.Module, scale: float = MASK_LOGIT_SCALE) -> torch.nn.Module:
    """benchmarks.jax_step.scale_mask_logits for segment-anything's Sam or sam2's SAM2Base, in
    place."""
    import torch

    with torch.no_grad():
        for mlp in mask_decoder_of(sam).output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(scale)
            mlp.layers[-1].bias.mul_(scale)
    return sam


def public_train_step(
    sam: torch.nn.Module,
    batch: dict[str, np.ndarray],
    device: str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    lora_start_layer: int = LORA_START_LAYER,
    epochs: int = 10,
    family: str = "sam",
) -> tuple[Callable[[], None], dict]:
    """The public code's train step on `sam` (LoRA on blocks >= lora_start_layer added here, in
    place) for one image of the batch contract: (step, notes), `notes` updated by each step
    with its loss, valid instances and whether the LoRA differs from its initial values
    (lora_changed). autocast_dtype (e.g. torch.bfloat16): the forwards under torch.autocast.
    family "sam2": `sam` is torch_sam2's SAM2Base, run as SAM2ImagePredictor runs it (module
    docstring)."""
    import torch
    import torch.nn.functional as F

    if family not in ("sam", "sam2"):
        raise ValueError(f"family={family!r}; expected 'sam' or 'sam2'")
    ssa_weight = 4.0 / (1.0 + np.exp(-(1 - (epochs + 1) / 2)))  # beta(epoch 1 of `epochs`)

    class LoRAQkv(torch.nn.Module):
        """The public code's _LoRA_qkv: low-rank updates added to the q and v thirds of qkv
        (each third dim_out wide: SAM's dim, a Hiera q-pool block's 2 x dim)."""

        def __init__(self, qkv: torch.nn.Linear):
            super().__init__()
            self.qkv, dim = qkv, qkv.in_features
            self.dim_out = qkv.out_features // 3
            self.linear_a_q = torch.nn.Linear(dim, LORA_RANK, bias=False)
            self.linear_b_q = torch.nn.Linear(LORA_RANK, self.dim_out, bias=False)
            self.linear_a_v = torch.nn.Linear(dim, LORA_RANK, bias=False)
            self.linear_b_v = torch.nn.Linear(LORA_RANK, self.dim_out, bias=False)
            for b in (self.linear_b_q, self.linear_b_v):
                torch.nn.init.zeros_(b.weight)  # A keeps nn.Linear's kaiming_uniform(a=sqrt(5))

        def forward(self, x):
            qkv = self.qkv(x)
            qkv[..., : self.dim_out] += self.linear_b_q(self.linear_a_q(x))
            qkv[..., -self.dim_out :] += self.linear_b_v(self.linear_a_v(x))
            return qkv

    for p in sam.parameters():
        p.requires_grad_(False)
    blocks = sam.image_encoder.trunk.blocks if family == "sam2" else sam.image_encoder.blocks
    for block in blocks[lora_start_layer:]:
        block.attn.qkv = LoRAQkv(block.attn.qkv)
    sam.to(device).train()
    trainable = [p for n, p in sam.named_parameters() if "linear_" in n]
    initial = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.Adam(trainable, lr=5e-4, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 250)
    )

    def tensor(key):
        return torch.from_numpy(batch[key][0]).to(device)

    def pixels(key):
        """The public code feeds [0, 1] RGB, NCHW, straight into SAM's image encoder; SAM 2 gets
        SAM2Transforms' normalisation, zero on the padding (resam-jax's pixel_norm "sam")."""
        x = tensor(key).permute(2, 0, 1)[None].float().div(255)
        if family == "sam2":
            mean = torch.tensor(SAM2_PIXEL_MEAN, device=device)[:, None, None]
            std = torch.tensor(SAM2_PIXEL_STD, device=device)[:, None, None]
            x = torch.where(tensor("content_mask")[None, None], (x - mean) / std, 0.0)
        return x

    weak, strong = pixels("weak_image"), pixels("strong_image")
    points, labels = tensor("points"), tensor("point_labels")  # [N, 2, 2], [N, 2]
    instance_valid = tensor("instance_valid")
    size = weak.shape[-1]
    autocast = partial(
        torch.autocast, device_type=device.split(":")[0], dtype=autocast_dtype,
        enabled=autocast_dtype is not None,
    )  # fmt: skip

    if family == "sam2":

        def encode(images):
            return sam2_features(sam, images)

        def feature_map(embedding):
            return embedding["image_embed"]

        def decode(embedding, points=None, boxes=None):
            """SAM2ImagePredictor._predict for all instances of the image at once: a box is two
            corner points labelled 2 and 3, the image's features repeated per prompt."""
            if boxes is not None:
                corners = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device)
                points = (boxes.reshape(-1, 2, 2), corners.repeat(boxes.shape[0], 1))
            encoder = sam.sam_prompt_encoder
            sparse, dense = encoder(points=points, boxes=None, masks=None)
            low_res, iou, _, _ = sam.sam_mask_decoder(
                image_embeddings=embedding["image_embed"],
                image_pe=encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
                repeat_image=True,
                high_res_features=embedding["high_res_feats"],
            )
            logits = F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)
            return logits[:, 0].float(), iou[:, 0].float()

    else:

        def encode(images):
            return sam.image_encoder(images)

        def feature_map(embedding):
            return embedding

        def decode(embedding, points=None, boxes=None):
            """The public Model.decode: one mask-decoder call for all instances of the image."""
            sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=None)
            low_res, iou = sam.mask_decoder(
                image_embeddings=embedding,
                image_pe=sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            logits = F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)
            return logits[:, 0].float(), iou[:, 0].float()

    def mask_boxes(masks):
        columns, rows = masks.any(dim=1), masks.any(dim=2)  # [N, W], [N, H]
        last = lambda f: f.shape[-1] - 1 - f.flip(-1).int().argmax(-1)  # noqa: E731
        boxes = torch.stack(
            [columns.int().argmax(-1), rows.int().argmax(-1), last(columns), last(rows)], -1
        ).float()
        return boxes, columns.any(-1)

    def box_features(embedding, boxes, stride=16):
        """The public get_bbox_feature, one box at a time, L2-normalised."""
        grid = embedding.shape[-1]
        features = []
        for x1, y1, x2, y2 in boxes.tolist():
            region = embedding[0, :, max(int(y1 / stride), 0) : min(int((y2 + stride - 1) / stride), grid),
                               max(int(x1 / stride), 0) : min(int((x2 + stride - 1) / stride), grid)]  # fmt: skip
            features.append((region if region.numel() else embedding[0]).mean(dim=(1, 2)))
        return F.normalize(torch.stack(features).float(), dim=1)

    def masked_mean(values, valid):
        return torch.where(valid, values, 0).sum() / valid.sum().clamp(min=1)

    notes: dict = {}

    def train_step():
        with torch.no_grad(), autocast():
            # Refine: point prompts on the weak view, entropy filter, overlap removal.
            logits, _ = decode(encode(weak), points=(points, labels))
            p = torch.sigmoid(logits).clamp(1e-6, 1 - 1e-6)
            entropy = -(p * torch.log(p) + (1 - p) * torch.log1p(-p))
            confident = (p * (1 - entropy) > REFINE_THRESHOLD) & instance_valid[:, None, None]
            refined = confident & ~(confident.sum(0) > 1)
            boxes, nonempty = mask_boxes(refined)
            valid = instance_valid & nonempty
            # Requery: the public code encodes the weak view a second time.
            weak_embedding = encode(weak)
            targets = (decode(weak_embedding, boxes=boxes)[0] > 0).float()
            weak_features = box_features(feature_map(weak_embedding), boxes)
        # Student on the strong view, gradients through LoRA.
        with autocast():
            embedding = encode(strong)
            logits, iou_predictions = decode(embedding, points=(points, labels))
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        focal = (FOCAL_ALPHA * (1 - torch.exp(-bce)) ** FOCAL_GAMMA * bce).mean(dim=(1, 2))
        probs = torch.sigmoid(logits)
        dice = 1 - (2 * (probs * targets).sum((1, 2)) + 1) / (
            probs.sum((1, 2)) + targets.sum((1, 2)) + 1
        )
        with torch.no_grad():
            predicted = logits >= 0
            actual_iou = (predicted & (targets > 0)).sum((1, 2)) / (
                (predicted | (targets > 0)).sum((1, 2)) + 1e-7
            )
        iou_loss = (iou_predictions - actual_iou) ** 2
        strong_features = box_features(feature_map(embedding), boxes)
        ssa = (1 - (strong_features * weak_features).sum(1)).mean()
        loss = (20 * masked_mean(focal, valid) + masked_mean(dice, valid)
                + masked_mean(iou_loss, valid) + ssa_weight * ssa)  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        changed = any(not torch.equal(p.detach(), p0) for p, p0 in zip(trainable, initial))
        notes.update(loss=loss.item(), valid_instances=int(valid.sum()), lora_changed=changed)

    return train_step, notes
