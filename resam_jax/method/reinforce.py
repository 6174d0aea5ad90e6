"""Reinforce: Soft Semantic Alignment (SSA) between weak-view and strong-view instance features.

Instance features are box-pooled from the image embeddings, L2-normalised and pushed into two
FIFO queues (weak view from the teacher, strong view from the student) kept as fixed-size ring
buffers. The loss is computed over the queues once they are full (source "queue", the public
master branch), or over the step's own instances once the queues were full before the step
(source "batch", the public camera branch, whose queues only say when SSA starts).

Unlike the public code, whose queues only ever hold detached features (so SSA never trains
anything), the entries written in the current step are the live strong-view features: the SSA
gradient reaches the student's LoRA parameters through them. The weak side is always
stop-gradient.
"""

from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp

from resam_jax.method.losses import masked_mean

SSAForm = Literal["matched", "softmax"]
SSASource = Literal["queue", "batch"]
SSASchedule = Literal["sigmoid", "constant"]

# torch.nn.functional.normalize's default eps, kept for parity with the public code.
_NORMALIZE_EPS = 1e-12


def box_pooled_features(embedding: jax.Array, boxes: jax.Array, stride: int) -> jax.Array:
    """Mean of the embedding inside each box (the public code's get_bbox_feature).

    The box [x1, y1, x2, y2] (input-frame pixels) maps to embedding cells
    [floor(x1 / stride), ceil(x2 / stride)) x [floor(y1 / stride), ceil(y2 / stride)); a box whose
    cell range is empty pools the whole map.

    Args:
        embedding: [B, E, E, C] image embedding.
        boxes: float32 [B, N, 4] xyxy in the S x S input frame.
        stride: input pixels per embedding cell (S // E, 16 for SAM).

    Returns:
        [B, N, C] pooled features (float32).
    """
    grid_size = embedding.shape[1]
    cell_lo = jnp.maximum(jnp.floor(boxes[..., :2] / stride), 0)
    cell_hi = jnp.minimum(jnp.floor((boxes[..., 2:] + stride - 1) / stride), grid_size)
    empty = jnp.any(cell_hi <= cell_lo, axis=-1, keepdims=True)  # [B, N, 1]
    cells = jnp.arange(grid_size)
    # inside[..., k, :] is the indicator over cells along axis k (0: x/columns, 1: y/rows).
    inside = (cells >= cell_lo[..., None]) & (cells < cell_hi[..., None])  # [B, N, 2, E]
    inside = (inside | empty[..., None]).astype(jnp.float32)
    summed = jnp.einsum(
        "bnh,bnw,bhwc->bnc", inside[..., 1, :], inside[..., 0, :], embedding.astype(jnp.float32)
    )
    count = jnp.sum(inside[..., 1, :], axis=-1) * jnp.sum(inside[..., 0, :], axis=-1)
    return summed / count[..., None]


def l2_normalize(features: jax.Array) -> jax.Array:
    norm = jnp.linalg.norm(features, axis=-1, keepdims=True)
    return features / jnp.maximum(norm, _NORMALIZE_EPS)


@flax.struct.dataclass
class FeatureQueues:
    """Paired FIFO queues of L2-normalised instance features, as ring buffers.

    Row i of `weak` and row i of `strong` always describe the same instance.
    """

    weak: jax.Array  # float32 [Q, C], teacher features of the weak view
    strong: jax.Array  # float32 [Q, C], student features of the strong view
    next_slot: jax.Array  # int32 [], the slot the next feature is written to (the oldest entry)
    size: jax.Array  # int32 [], number of filled slots (<= Q)

    @classmethod
    def empty(cls, capacity: int, feature_dim: int) -> "FeatureQueues":
        # Two separate buffers: the state is donated, and a buffer may be donated only once.
        return cls(
            weak=jnp.zeros((capacity, feature_dim), jnp.float32),
            strong=jnp.zeros((capacity, feature_dim), jnp.float32),
            next_slot=jnp.int32(0),
            size=jnp.int32(0),
        )

    @property
    def capacity(self) -> int:
        return self.weak.shape[0]

    @property
    def full(self) -> jax.Array:
        return self.size == self.capacity

    def push(self, weak: jax.Array, strong: jax.Array, valid: jax.Array) -> "FeatureQueues":
        """Appends the valid rows of (weak, strong) in order, overwriting the oldest entries.

        Equivalent to pushing the valid rows one by one into a deque(maxlen=Q): when more than Q
        rows are valid only the last Q survive. Differentiable with respect to `strong`.

        Args:
            weak, strong: [M, C] features (normalised by the caller).
            valid: bool [M].
        """
        capacity = self.capacity
        rank = jnp.cumsum(valid, dtype=jnp.int32) - 1
        count = jnp.sum(valid, dtype=jnp.int32)
        survives = valid & (rank >= count - capacity)
        slot = jnp.where(survives, (self.next_slot + rank) % capacity, capacity)
        return FeatureQueues(
            weak=self.weak.at[slot].set(weak, mode="drop"),
            strong=self.strong.at[slot].set(strong, mode="drop"),
            next_slot=(self.next_slot + count) % capacity,
            size=jnp.minimum(self.size + count, capacity),
        )


def alignment_distances(strong: jax.Array, weak: jax.Array) -> jax.Array:
    """1 - cos(strong_i, weak_i) per row [...] (the public similarity_loss before its mean)."""
    return 1.0 - jnp.sum(l2_normalize(strong) * l2_normalize(weak), axis=-1)


def matched_alignment_loss(strong: jax.Array, weak: jax.Array) -> jax.Array:
    """Public-code SSA: mean over queue entries of 1 - cos(strong_i, weak_i)."""
    return jnp.mean(alignment_distances(strong, weak))


def softmax_alignment_loss(strong: jax.Array, weak: jax.Array, tau: float) -> jax.Array:
    """Paper (v1) SSA: (1/Q) sum_i sum_{j != i} (1 - S_ij) softmax_j(S_ij / tau), S_ii = 0.

    S_ij = cos(strong_i, weak_j): each strong-view feature is pulled towards the weak-view
    features of the semantically closest other instances in the queue. As the paper writes it,
    the zeroed diagonal still takes part in the softmax normalisation.
    """
    similarity = l2_normalize(strong) @ l2_normalize(weak).T
    off_diagonal = 1.0 - jnp.eye(similarity.shape[0], dtype=similarity.dtype)
    similarity = similarity * off_diagonal
    weights = jax.nn.softmax(similarity / tau, axis=-1)
    return jnp.mean(jnp.sum((1.0 - similarity) * weights * off_diagonal, axis=-1))


def ssa_loss(queues: FeatureQueues, form: SSAForm, tau: float) -> jax.Array:
    """SSA loss over the queues; zero until they are full (as in the public code)."""
    if form == "matched":
        loss = matched_alignment_loss(queues.strong, queues.weak)
    elif form == "softmax":
        loss = softmax_alignment_loss(queues.strong, queues.weak, tau)
    else:
        raise ValueError(f"unknown SSA form {form!r}; expected 'matched' or 'softmax'")
    return jnp.where(queues.full, loss, 0.0)


def reinforce(
    queues: FeatureQueues,
    weak_embedding: jax.Array,
    strong_embedding: jax.Array,
    boxes: jax.Array,
    valid: jax.Array,
    stride: int,
    form: SSAForm,
    tau: float,
    source: SSASource = "queue",
) -> tuple[jax.Array, FeatureQueues]:
    """Pushes this step's instance features and returns (SSA loss, updated queues).

    Args:
        queues: the queues before this step (constants).
        weak_embedding: teacher embedding of the weak view [B, E, E, C]; no gradient flows into it.
        strong_embedding: student embedding of the strong view [B, E, E, C], differentiable.
        boxes: float32 [B, N, 4] Requery boxes (the same boxes pool both views).
        valid: bool [B, N] instances that survived Refine/Requery.
        stride, form, tau: see box_pooled_features and ssa_loss.
        source: "queue": ssa_loss over the queues after the push; "batch": the mean of
            1 - cos(strong, weak) over this step's valid instances, zero unless the queues
            were full before the push (form "matched" only).

    Returns:
        The loss carries gradient only through the strong-view features of this step.
        The returned queues hold those live features too; the caller stores them as state, where
        they are constants from the next step on.
    """
    weak = l2_normalize(box_pooled_features(jax.lax.stop_gradient(weak_embedding), boxes, stride))
    strong = l2_normalize(box_pooled_features(strong_embedding, boxes, stride))
    feature_dim = weak.shape[-1]
    pushed = queues.push(
        weak.reshape(-1, feature_dim), strong.reshape(-1, feature_dim), valid.reshape(-1)
    )
    if source == "queue":
        return ssa_loss(pushed, form, tau), pushed
    if source == "batch":
        loss = masked_mean(alignment_distances(strong, weak), valid)
        return jnp.where(queues.full, loss, 0.0), pushed
    raise ValueError(f"unknown SSA source {source!r}; expected 'queue' or 'batch'")


def ssa_weight(
    epoch: jax.Array, num_epochs: int, max_weight: float, schedule: SSASchedule = "sigmoid"
) -> jax.Array:
    """The SSA weight of the 1-based epoch e of E. "sigmoid" (master branch):
    beta(e) = max_weight / (1 + exp(-(e - (E + 1) / 2))), growing from a small share of the loss
    in the first epochs to max_weight in the last ones; "constant" (camera branch): max_weight."""
    if schedule == "sigmoid":
        return max_weight * jax.nn.sigmoid(epoch - (num_epochs + 1) / 2)
    if schedule == "constant":
        return jnp.float32(max_weight)
    raise ValueError(f"unknown SSA schedule {schedule!r}; expected 'sigmoid' or 'constant'")
