"""The teacher's pseudo-labels (docs/method.md sections 4.1-4.2): Refine and Requery from one
encoding of the weak view. The train step trains on them; the evaluator draws them and
resam_jax.experiments.diagnose scores their stages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax

from resam_jax.method.instances import in_instance_chunks
from resam_jax.method.refine import EntropyUnit, refine_masks
from resam_jax.method.requery import pseudo_labels, requery_prompts
from resam_jax.models import Backbone, Embedding, Prompts


class PseudoLabels(NamedTuple):
    weak_embedding: Embedding  # the teacher's embedding of the weak view
    point_masks: jax.Array  # bool [B, N, S, S] point-prompted teacher masks (logit > 0)
    refined: jax.Array  # bool [B, N, S, S] Refine's confident, overlap-free pixels
    boxes: jax.Array  # float32 [B, N, 4] tight boxes of the refined masks (Requery prompts)
    masks: jax.Array  # bool [B, N, S, S] box-prompted teacher masks
    valid: jax.Array  # bool [B, N] instances whose refined mask is not empty
    overlap_fraction: jax.Array  # float32 [B] share of refined pixels removed as overlaps


def teacher_pseudo_labels(
    teacher: Backbone,
    weak_image: jax.Array,
    content_mask: jax.Array,
    point_prompts: Mapping[str, jax.Array],
    instance_valid: jax.Array,
    refine_threshold: float,
    instance_chunk: int = 0,
    refine_entropy: EntropyUnit = "nats",
) -> PseudoLabels:
    """Refine and Requery: one encoding of the weak view serves both teacher decodes.

    Args:
        teacher: the model with the teacher's LoRA.
        weak_image: uint8 weak view [B, S, S, 3]; content_mask: bool [B, S, S].
        point_prompts: {"points", "point_labels"} of the batch.
        instance_valid: bool [B, N].
        refine_threshold, refine_entropy: see refine_masks.
        instance_chunk: the decoder runs on this many instance slots at a time
            (in_instance_chunks; 0: all at once).
    """
    weak_embedding = teacher.encode_pixels(weak_image, content_mask)

    def decode(prompts: Prompts) -> jax.Array:
        return teacher.decode_masks(weak_embedding, prompts)[0]

    refine_logits = in_instance_chunks(decode, point_prompts, instance_chunk)
    refined, overlap_fraction = refine_masks(
        refine_logits, instance_valid, refine_threshold, refine_entropy
    )
    boxes, valid = requery_prompts(refined, instance_valid)
    requery_logits = in_instance_chunks(decode, {"boxes": boxes}, instance_chunk)
    return PseudoLabels(
        weak_embedding, refine_logits > 0, refined, boxes, pseudo_labels(requery_logits), valid,
        overlap_fraction,
    )  # fmt: skip
