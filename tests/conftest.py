"""Shared test set-up: float32 matmuls everywhere, so parity bounds mean what they say."""

import ctypes
import gc
import resource
import sys
from pathlib import Path

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "float32")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def nwpu_dir() -> Path:
    """The real NWPU VHR-10 benchmark, beside the repository (never copied into it)."""
    from data_fixtures import nwpu_real_dir

    path = nwpu_real_dir()
    if path is None:
        pytest.skip("real NWPU VHR-10 not found next to the repository ($RESAM_NWPU_DIR)")
    return path


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """A small demo-style dataset (8 train, 4 val images), generated and prepared once per
    session for the run tests: (manual_dir, data_dir)."""
    from resam_jax.data.prepare import prepare
    from resam_jax.data.synthetic import write_coco_dataset

    root = tmp_path_factory.mktemp("synthetic")
    manual_dir = write_coco_dataset(root / "coco", num_train=8, num_val=4, image_size=160, seed=0)
    splits = {"train": "annotations/train.json", "val": "annotations/val.json"}
    prepare(
        "coco_instances",
        config="resam_demo",
        data_dir=root / "tfds",
        manual_dir=manual_dir,
        annotations=splits,
    )
    return manual_dir, root / "tfds"


# --- Peak memory of the suite (issue 18): reported at the end of every run -----------------
# ru_maxrss only grows, so a test that raises it is the test that set the new peak: the report
# names the tests that raised the peak of this process and of its child processes (the CLI
# tests' subprocesses) the most, so a dominating test shows itself in every CI log.
_PEAK_RAISES: dict[str, list[tuple[int, int, str]]] = {"pytest process": [], "child processes": []}


def _trim_heap() -> None:
    gc.collect()
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@pytest.fixture(autouse=True)
def _release_memory_after_each_test():
    """Give the heap back after every test (a collection and malloc_trim: milliseconds), and
    the compiled programs after every module: without this the suite's RSS only grows and the
    full-size tests stack their peaks (14.9 GiB measured, 6.9 GiB of it held over from earlier
    tests)."""
    yield
    _trim_heap()


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs_after_each_module():
    yield
    jax.clear_caches()
    _trim_heap()


def _max_rss_kib() -> dict[str, int]:
    return {
        "pytest process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        # A child counts the parent's pages between fork and exec: this is an upper bound.
        "child processes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    }


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    before = _max_rss_kib()
    yield
    after = _max_rss_kib()
    for kind, peak in after.items():
        if peak > before[kind]:
            _PEAK_RAISES[kind].append((peak - before[kind], peak, item.nodeid))


def pytest_terminal_summary(terminalreporter):
    gib = 1 / 2**20
    terminalreporter.section("peak memory (max RSS)")
    for kind, peak in _max_rss_kib().items():
        raises = sorted(_PEAK_RAISES[kind], reverse=True)[:5]
        terminalreporter.write_line(f"{kind}: {peak * gib:.2f} GiB; raised most by:")
        for increment, level, nodeid in raises:
            terminalreporter.write_line(
                f"  +{increment * gib:.2f} GiB to {level * gib:.2f} GiB  {nodeid}"
            )
