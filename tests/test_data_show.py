"""The show CLI draws both views with masks, boxes and prompts."""

from __future__ import annotations

import numpy as np
import PIL.Image
from data_fixtures import nwpu_release

from resam_jax import visualize
from resam_jax.data import show
from resam_jax.data.pipeline import DataConfig, make_dataset
from resam_jax.data.prepare import prepare


def test_grid_shows_weak_and_strong_views_with_prompts(tmp_path, capsys):
    prepare("nwpu_vhr10", manual_dir=nwpu_release(tmp_path / "release"), data_dir=tmp_path / "tfds")
    output = tmp_path / "grid.png"
    argv = [
        "--dataset",
        "nwpu_vhr10",
        "--data-dir",
        str(tmp_path / "tfds"),
        "--num-samples",
        "3",
        "--image-size",
        "64",
        "--panel-size",
        "128",
        "--output",
        str(output),
    ]
    assert show.main(argv) == 0
    grid = np.asarray(PIL.Image.open(output))
    assert grid.shape == (3 * 128, 2 * 128, 3)
    # The first sample's points are drawn where the pipeline put them, in their label's colour.
    config = DataConfig(
        data_dir=str(tmp_path / "tfds"), image_size=64, read_threads=1, prefetch_batches=1
    )
    batch = next(
        iter(make_dataset(config, "train", train=True, seed=0, shard_index=0, shard_count=1))
    )
    sample = {k: v[0] for k, v in batch.items()}
    for xy, label in zip(sample["points"][0], sample["point_labels"][0], strict=True):
        x, y = ((xy + 0.5) * 2).astype(int)  # 64 -> 128 panel
        colour = visualize.POSITIVE if label == 1 else visualize.NEGATIVE
        np.testing.assert_array_equal(grid[y, x], colour)
        np.testing.assert_array_equal(grid[y, x + 128], colour)  # strong view, same geometry


def test_show_reports_a_missing_dataset_cleanly(tmp_path, capsys):
    code = show.main(
        [
            "--dataset",
            "nwpu_vhr10",
            "--data-dir",
            str(tmp_path),
            "--output",
            str(tmp_path / "g.png"),
        ]
    )
    assert code == 2 and "is not built: expected" in capsys.readouterr().err
