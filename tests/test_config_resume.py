"""Resuming a run whose config.json predates a field: the field counts as its default."""

import json

from resam_jax.config import base_config
from resam_jax.run import reporting

NEW_FIELDS = (
    "model.attention",
    "model.attention_chunk_size",
    "model.remat",
    "train.grad_accum_steps",
)


def saved_without_new_fields(tmp_path):
    saved = reporting.flat_config(base_config().to_dict())
    for name in NEW_FIELDS:
        del saved[name]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(saved))
    return path


def test_a_field_missing_from_an_older_config_counts_as_its_default(tmp_path):
    path = saved_without_new_fields(tmp_path)
    defaults = reporting.flat_config(base_config().to_dict())
    assert reporting.config_changes(path, base_config().to_dict(), defaults) == []
    without_defaults = reporting.config_changes(path, base_config().to_dict())
    assert [name for name, _, _ in without_defaults] == sorted(NEW_FIELDS)


def test_memory_options_may_change_on_resume_and_accumulation_may_not(tmp_path):
    path = saved_without_new_fields(tmp_path)
    defaults = reporting.flat_config(base_config().to_dict())
    config = base_config()
    config.model.update(attention="dot_product", remat="none", attention_chunk_size=256)
    config.train.grad_accum_steps = 2
    changes = reporting.config_changes(path, config.to_dict(), defaults)
    fatal = [name for name, _, _ in changes if name not in reporting.RESUMABLE_FIELDS]
    assert len(changes) == 4 and fatal == ["train.grad_accum_steps"]
