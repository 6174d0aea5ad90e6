"""The tiny SAM shipped for the demo: it loads from the package, segments the demo's scenes, and
its Requery pseudo-labels beat its point masks there (what the demo's ReSAM gain rests on)."""

import json

import jax
import numpy as np
import pytest

from resam_jax import parallel
from resam_jax.config import DEMO_SAM_CHECKPOINT, base_config
from resam_jax.data import pipeline
from resam_jax.data.prepare import prepare
from resam_jax.data.synthetic import write_coco_dataset
from resam_jax.method.eval_step import batch_prompts, predict_logits
from resam_jax.method.pseudo_labels import teacher_pseudo_labels
from resam_jax.method.train_state import split_model
from resam_jax.models.sam import load_sam
from resam_jax.run import Evaluator

# On these 12 target scenes (seed 7) the packaged checkpoint scores IoU 0.469 (precision 0.95,
# recall 0.48): it finds every object but under-segments. A randomly initialised tiny SAM
# scores about 0 and gives Refine nothing to keep.
MIN_TARGET_IOU = 0.3
# Mean per-instance IoU on the same scenes: point masks 0.453, Requery pseudo-labels 0.489.
MIN_REQUERY_GAIN = 0.015


@pytest.fixture(scope="module")
def target_scenes(tmp_path_factory) -> pipeline.DataConfig:
    root = tmp_path_factory.mktemp("demo_check")
    manual_dir = write_coco_dataset(
        root / "coco", num_train=1, num_val=12, image_size=160, seed=7, style="target"
    )
    splits = {"train": "annotations/train.json", "val": "annotations/val.json"}
    prepare("coco_instances", config="demo_check", data_dir=root / "tfds", manual_dir=manual_dir, annotations=splits)  # fmt: skip
    return pipeline.DataConfig(
        dataset="coco_instances", dataset_config="demo_check", data_dir=str(root / "tfds"),
        image_size=128, max_instances=8, host_batch_size=4,
    )  # fmt: skip


def test_header_names_the_script_that_made_it():
    header = json.loads((DEMO_SAM_CHECKPOINT / "sam_checkpoint.json").read_text())
    assert header["model_type"] == "tiny" and header["config"]["image_size"] == 128
    assert header["source"]["path"] == "tools/pretrain_tiny_sam.py"
    assert {"seed", "steps", "final_loss", "command"} <= header["source"].keys()
    # The domain gap the demo sets out to close, as the script measured it.
    iou = header["source"]["point_prompt_iou"]
    assert iou["source"] > 0.75 and iou["target"] < iou["source"] - 0.2


def test_packaged_sam_segments_target_scenes_from_points(tmp_path, target_scenes):
    model = load_sam(DEMO_SAM_CHECKPOINT, lora_start_layer=0)
    config = base_config()
    config.model.pixel_norm = "sam"  # how tools/pretrain_tiny_sam.py trained it
    config.eval.prompt_seeds = 1
    config.train.num_overlays = 0
    mesh = parallel.data_mesh()
    graphdef, lora, frozen = split_model(model)
    scores = Evaluator(graphdef, config, target_scenes, mesh, tmp_path).scores(
        parallel.replicate(lora, mesh), parallel.replicate(frozen, mesh)
    )
    assert scores["images"] == 12
    assert scores["iou"] > MIN_TARGET_IOU


def test_requery_pseudo_labels_beat_point_masks_on_target_scenes(target_scenes):
    model = load_sam(DEMO_SAM_CHECKPOINT, lora_start_layer=0)
    config = base_config()
    config.model.pixel_norm = "sam"  # how tools/pretrain_tiny_sam.py trained it

    @jax.jit
    def masks(batch):
        points = predict_logits(model, batch, "points") >= 0.5
        pseudo = teacher_pseudo_labels(
            model, batch["weak_image"], batch["content_mask"], batch_prompts(batch, "points"),
            batch["instance_valid"],
            config.method.refine_threshold,
        )  # fmt: skip
        return points, pseudo.masks

    ious = {"points": [], "requery": []}
    for batch in pipeline.make_dataset(target_scenes, "val", train=False, seed=0):
        gt, valid = np.asarray(batch["masks"]), np.asarray(batch["instance_valid"])
        for name, predicted in zip(ious, jax.device_get(masks(batch)), strict=True):
            union = np.maximum((predicted | gt).sum(axis=(-2, -1)), 1)
            ious[name].extend(((predicted & gt).sum(axis=(-2, -1)) / union)[valid])
    points, requery = np.mean(ious["points"]), np.mean(ious["requery"])
    assert len(ious["points"]) > 50
    assert requery > points + MIN_REQUERY_GAIN, (points, requery)
