"""Parity of one ReSAM train step with method.variant="camera" against the public code's camera
branch (issue 21), as tests/test_step_parity.py pins "v1" against its master branch.

The same packaged tiny SAM with the same non-zero random LoRA, the same image, views and
prompts as the v1 test (its helpers). `camera_step` below re-states the inner loop of the
camera branch's `train_resam` (head 34465f7) for one image: the teacher (the model itself,
no_grad) decodes the weak view with the points; Refine keeps p * (1 - H / ln 2) > 0.5 without
overlaps; Requery re-prompts the teacher with the tight boxes of the refined masks; the student
decodes the STRONG view with the POINTS; the loss is
    0.1 BCE(sigmoid) + dice + IoU-MSE (target: probabilities >= 0.5) + 0.1 SSA,
SSA = mean(1 - cos) between the step's strong-view box features (student, with gradient) and
weak-view box features (the Requery pass's embedding, no gradient), computed because the
32-entry queue is full before the step; no loss watcher; then torch.optim.Adam takes one step.

Both queues start full of random unit vectors (the same on both sides): the camera loss must
not read them, only be gated by them. The instances are chosen so that Requery drops none (the
camera branch still misaligns targets when it drops one; asserted).

What is pinned: refined masks, Requery boxes, pseudo-labels; the loss parts (bce, dice, iou,
ssa, total) and LoRA gradients of micro_step itself; make_train_step's loss parts and first Adam
update; with the queue one entry short of full, SSA is 0.

Measured on the real NWPU image 015.jpg, 4 instances (CPU, float32 matmuls; printed with -s):
    refined masks (547 px), Requery boxes and pseudo-labels (1183 px): equal;
    loss-part abs diffs: bce 2.2e-8, dice 2.4e-7, iou 7.5e-9, ssa 6.0e-8, total 2.4e-7
        (public: bce 0.0219, dice 0.315, iou 0.0716, ssa 0.0615, total 0.395);
    LoRA gradients max abs diff 6.3e-8 (max |grad| 0.024); first Adam update 1.2e-7.

Mutants (each a copy of the repository with one edit, this file run there):
    (1) the camera preset's refine_threshold 0.5 -> 0.3: 3 of 4 tests fail (refined masks: 127
        pixels differ; "bce: ours 0.02057..., public 0.02185...");
    (2) bce_loss computed as the focal loss: 2 fail ("bce: ours 0.03273..., public 0.02185...");
    (3) the camera preset's ssa_source "batch" -> "queue": 3 fail ("ssa: ours 0.9000...,
        public 0.06146..."; with the queue one entry short, SSA 0.888 instead of 0);
    (4) the camera preset's iou_target_on "probs" -> "logits": 2 fail ("iou: ours 0.08150...,
        public 0.07158...").
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sam_reference import attach_lora, demo_sam, public_forward, torch_twin
from test_step_parity import (
    IMAGE_SIZE,
    LORA_SCALE,
    LR,
    MAX_INSTANCES,
    WEIGHT_DECAY,
    assert_first_adam_update_matches,
    make_batch,
    max_abs_diff,
    prompts,
    public_boxes,
    select_instances,
    train_step_of,
    view,
)

from resam_jax.config import base_config, resolve_method_variant
from resam_jax.method.reinforce import FeatureQueues
from resam_jax.method.train_state import create_train_state, split_model
from resam_jax.method.train_step import micro_step

BCE_W, SSA_W = 0.1, 0.1  # the camera branch's loss_total weights
QUEUE = 32  # its len_q


def queue_entries(feature_dim: int) -> np.ndarray:
    """Random unit vectors filling a queue (what earlier steps left there)."""
    rows = np.random.default_rng(3).normal(size=(QUEUE, feature_dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# --------------------------------------------------------------------------- the camera step


def camera_refine(sam, images_weak, points) -> torch.Tensor:
    """process_forward with entropy_norm and the > 0.5 rule, then overlap removal."""
    with torch.no_grad():
        _, masks_pred, _ = public_forward(sam, images_weak, points)
    p = torch.sigmoid(masks_pred).clamp(1e-6, 1 - 1e-6)
    eps = 1e-8
    entropy = -(p * torch.log(p + eps) + (1 - p) * torch.log(1 - p + eps))
    entropy_norm = entropy / (torch.log(torch.tensor(2.0)) + 1e-8)
    pred_binary = ((p * (1 - entropy_norm)) > 0.5).float()
    invert_overlap = 1.0 - (pred_binary.sum(dim=0) > 1).float()
    return (pred_binary * invert_overlap) > 0.5


def bbox_feature(embedding, bbox, stride):  # utils/utils.py get_bbox_feature, 'avg'
    embedding = embedding[0]
    _, height, width = embedding.shape
    x1, y1, x2, y2 = bbox
    fx1, fy1 = max(int(x1 / stride), 0), max(int(y1 / stride), 0)
    fx2 = min(int((x2 + stride - 1) / stride), width)
    fy2 = min(int((y2 + stride - 1) / stride), height)
    region = embedding[:, fy1:fy2, fx1:fx2]
    if region.numel() == 0:
        region = embedding
    return region.mean(dim=(1, 2))


def similarity_loss(hard_feats, soft_feats):  # utils/utils.py similarity_loss
    soft = F.normalize(torch.stack(list(soft_feats)), dim=1)
    hard = F.normalize(torch.stack(list(hard_feats)), dim=1)
    return (1 - (soft * hard).sum(dim=1)).mean()


def dice_loss(inputs, targets, smooth=1):  # utils/losses.py DiceLoss, now given probabilities
    inputs = torch.clamp(inputs, 0, 1).view(-1)
    targets = targets.view(-1)
    intersection = (inputs * targets).sum()
    return 1 - (2.0 * intersection + smooth) / (inputs.sum() + targets.sum() + smooth)


def calc_iou(pred_mask, gt_mask):  # utils/eval_utils.py calc_iou, now given probabilities
    pred_mask = (pred_mask >= 0.5).float()
    intersection = torch.sum(pred_mask * gt_mask, dim=(1, 2))
    union = torch.sum(pred_mask, dim=(1, 2)) + torch.sum(gt_mask, dim=(1, 2)) - intersection
    return (intersection / (union + 1e-7)).unsqueeze(1)


def camera_step(sam, lora_params, batch) -> dict:
    """The camera branch's train_resam inner loop for one image, queue full, then one Adam step."""
    n = int(batch["instance_valid"][0].sum())
    images_weak, images_strong = view(batch, "weak_image"), view(batch, "strong_image")
    points = prompts(batch, n)
    refined = camera_refine(sam, images_weak, points)
    bboxes = public_boxes(refined, n)
    with torch.no_grad():
        embeddings, soft_masks, _ = public_forward(sam, images_weak, bboxes)
    hard_embeddings, pred_masks, iou_predictions = public_forward(sam, images_strong, points)
    # get_bbox_feature's stride 16 is SAM's 1024 / 64; the tiny SAM's is 128 / its grid.
    stride = IMAGE_SIZE // embeddings.shape[-1]
    feats = F.normalize(torch.stack([bbox_feature(embeddings, b, stride) for b in bboxes]), dim=1)
    feats_hard = F.normalize(
        torch.stack([bbox_feature(hard_embeddings, b, stride) for b in bboxes]), dim=1
    )
    loss_sim = similarity_loss(feats_hard, feats)  # len(feature_queue) == len_q
    loss_bce = loss_dice = loss_iou = torch.tensor(0.0)
    for pred_mask, soft_mask, iou_prediction in zip(pred_masks, soft_masks, iou_predictions):
        soft_mask = (soft_mask > 0).float()
        pred_mask = torch.sigmoid(pred_mask)
        loss_bce = loss_bce + F.binary_cross_entropy(pred_mask.view(-1), soft_mask.view(-1))
        loss_dice = loss_dice + dice_loss(pred_mask, soft_mask)
        batch_iou = calc_iou(pred_mask[None], soft_mask[None])
        loss_iou = loss_iou + F.mse_loss(
            iou_prediction.view(-1), batch_iou.view(-1), reduction="sum"
        )
    loss_bce, loss_dice, loss_iou = loss_bce / n, loss_dice / n, loss_iou / n
    loss_total = BCE_W * loss_bce + loss_dice + loss_iou + SSA_W * loss_sim
    loss_total.backward()

    before = {path: w.detach().clone() for path, w in lora_params.items()}
    grads = {path: w.grad.detach().clone() for path, w in lora_params.items()}
    torch.optim.Adam(lora_params.values(), lr=LR, weight_decay=WEIGHT_DECAY).step()
    return dict(
        refined=refined.numpy(),
        boxes=bboxes.numpy(),
        pseudo_labels=(soft_masks > 0).numpy(),
        bce=loss_bce.item(),
        dice=loss_dice.item(),
        iou=loss_iou.item(),
        ssa=loss_sim.item(),
        loss=loss_total.item(),
        grads={path: g.numpy().T for path, g in grads.items()},
        updates={path: (w.detach() - before[path]).numpy().T for path, w in lora_params.items()},
    )


# --------------------------------------------------------------------------- ours


def camera_config():
    config = base_config()
    config.method.variant = "camera"
    resolve_method_variant(config)
    config.optim.update(lr=LR, weight_decay=WEIGHT_DECAY, warmup_steps=0)
    return config


@pytest.fixture(scope="module")
def setup():
    model = demo_sam(lora_b_scale=LORA_SCALE, lora_a_scale=LORA_SCALE, unit_pixels=True)
    reference = torch_twin(model)
    lora_params = attach_lora(reference, model)
    batch = make_batch()
    n = int(batch["instance_valid"].sum())
    refined = camera_refine(reference, view(batch, "weak_image"), prompts(batch, n))
    keep = np.flatnonzero(refined.flatten(1).any(1).numpy())[:MAX_INSTANCES]
    assert len(keep) >= 3, "too few instances survive the camera Refine for a meaningful test"
    batch = select_instances(batch, keep)
    return model, batch, camera_step(reference, lora_params, batch)


def full_queues(feature_dim: int, size: int = QUEUE) -> FeatureQueues:
    entries = jnp.asarray(queue_entries(feature_dim))
    return FeatureQueues(entries, entries[::-1], jnp.int32(size % QUEUE), jnp.int32(size))


@pytest.fixture(scope="module")
def ours(setup):
    """micro_step (the step's loss and gradient), with the queues full and one short."""
    model, batch, _ = setup
    config = camera_config()
    graphdef, lora, frozen = split_model(model)
    state = create_train_state(lora, model.feature_dim, config)
    step = jax.jit(functools.partial(micro_step, graphdef, config, 1000))
    batch = jax.tree.map(jnp.asarray, batch)
    _, grads, metrics = step(state, full_queues(model.feature_dim), frozen, batch)
    _, _, short = step(state, full_queues(model.feature_dim, QUEUE - 1), frozen, batch)
    return grads, metrics, short


def test_camera_pseudo_labels_match_public(setup):
    model, batch, public = setup
    from resam_jax.method.pseudo_labels import teacher_pseudo_labels

    method = camera_config().method
    n = int(batch["instance_valid"].sum())
    pseudo = jax.jit(
        lambda b: teacher_pseudo_labels(
            model,
            b["weak_image"],
            b["content_mask"],
            {"points": b["points"], "point_labels": b["point_labels"]},
            b["instance_valid"],
            method.refine_threshold,
            refine_entropy=method.refine_entropy,
        )  # fmt: skip
    )(jax.tree.map(jnp.asarray, batch))
    assert np.asarray(pseudo.valid[0]).tolist() == [True] * n + [False]
    refined_mismatch = int((np.asarray(pseudo.refined[0, :n]) != public["refined"]).sum())
    label_mismatch = int((np.asarray(pseudo.masks[0, :n]) != public["pseudo_labels"]).sum())
    print(
        f"\n{n} instances, refined pixels {public['refined'].sum()}, pseudo-label pixels "
        f"{public['pseudo_labels'].sum()}; mismatched pixels: refined {refined_mismatch}, "
        f"pseudo-labels {label_mismatch}"
    )
    assert public["refined"].sum() > 0 and public["pseudo_labels"].sum() > 0
    assert refined_mismatch == 0 and label_mismatch == 0
    np.testing.assert_array_equal(np.asarray(pseudo.boxes[0, :n]), public["boxes"])


def assert_loss_parts_match(metrics, public, label):
    diffs = {
        name: abs(float(metrics[name]) - public[name])
        for name in ("bce", "dice", "iou", "ssa", "loss")
    }
    print(f"\n{label}: public " + " ".join(f"{k} {public[k]:.6g}" for k in diffs))
    print(f"{label}: loss-part abs diffs {diffs}")
    for name, diff in diffs.items():
        assert diff <= 1e-6 * max(1.0, abs(public[name])), (
            f"{name}: ours {float(metrics[name])}, public {public[name]}"
        )


def test_camera_loss_and_gradients_match_public(setup, ours):
    _, _, public = setup
    grads, metrics, _ = ours
    assert public["ssa"] > 0  # the SSA term is live, not gated off
    assert float(metrics["ssa_weight"]) == pytest.approx(SSA_W)
    assert_loss_parts_match(metrics, public, "micro_step")
    grad_diff, grad_scale = max_abs_diff(grads, public["grads"])
    print(f"LoRA grad max abs diff {grad_diff:.3g} (max |grad| {grad_scale:.3g})")
    assert grad_scale > 1e-4
    assert grad_diff <= 1e-4 * grad_scale
    for path, g in public["grads"].items():
        assert np.abs(g).max() > 0, path


def test_camera_ssa_waits_for_a_full_queue(ours):
    """One entry short of full before the step: no SSA, though the push fills the queue."""
    _, _, short = ours
    assert float(short["ssa"]) == 0.0


def test_camera_train_step_matches_public(setup):
    """make_train_step itself: its loss parts and first Adam update equal the camera step's."""
    model, batch, public = setup
    config = camera_config()
    graphdef, lora, frozen = split_model(model)
    before = jax.tree.map(np.array, lora)
    state = create_train_state(lora, model.feature_dim, config)
    state = state.replace(ssa_queues=full_queues(model.feature_dim))
    state, metrics = train_step_of(graphdef, config)(
        state, frozen, jax.tree.map(jnp.asarray, batch)
    )
    assert not bool(metrics["skipped"])
    assert_loss_parts_match(metrics, public, "make_train_step")
    assert_first_adam_update_matches(state, before, public)
