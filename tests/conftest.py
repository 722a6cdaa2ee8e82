"""Shared fixtures. Every test is offline: HF_HUB_OFFLINE=1 and an empty HF_HOME of its own.

The miniature world is built once per checkout (under ``.test-cache/``, keyed by its settings) and
reused by every test that needs it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before huggingface_hub is imported anywhere: it reads these once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="unlearn-audit-test-hf-")
os.environ.pop("HF_HUB_CACHE", None)
os.environ.pop("HF_TOKEN", None)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # pytest-xdist: share the cores between the workers
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))
# The miniature is built inside the checkout (ignored by git): a fresh clone, as in CI, builds it anew.
os.environ.setdefault("UNLEARN_AUDIT_HOME", str(Path(__file__).resolve().parent.parent / ".test-cache"))
# Probe results are cached per session only: every test session computes what it checks.
os.environ["UNLEARN_AUDIT_RESULTS"] = tempfile.mkdtemp(prefix="unlearn-audit-test-results-")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def world():
    """The built miniature (see unlearn_audit.miniature.build)."""
    from unlearn_audit.miniature.build import build_miniature

    return build_miniature()


@pytest.fixture(scope="session")
def tofu_world():
    """The miniature TOFU world (see unlearn_audit.miniature.worlds)."""
    from unlearn_audit.miniature.worlds import build_world

    return build_world("tofu")


@pytest.fixture(scope="session")
def wmdp_world():
    """The miniature WMDP world: WMDP-Bio and MMLU layouts, an original, a retrained, a fragile and a robust model."""
    from unlearn_audit.miniature.worlds import build_world

    return build_world("wmdp")


@pytest.fixture(scope="session")
def audits(world, tmp_path_factory):
    """Audits of the fragile and robust checkpoints through the CLI, run once and shared."""
    from typer.testing import CliRunner

    from unlearn_audit.cli import app

    runner = CliRunner()
    results = {}
    for name in ("fragile", "robust"):
        out = tmp_path_factory.mktemp(f"audit-{name}")
        result = runner.invoke(app, ["check", f"miniature/{name}", "--quant", "rtn:8,rtn:4",
                                     "--cache-dir", str(world.hub_cache), "--out", str(out)])
        results[name] = (result, out)
    return results


def pytest_sessionstart(session):
    """Under pytest-xdist (``-n``): build the miniature worlds in the controller before its workers start, so no
    two processes build or replace the same world. A plain run builds each world when a test first needs it."""
    if hasattr(session.config, "workerinput") or not getattr(session.config.option, "numprocesses", None):
        return
    from unlearn_audit.miniature.build import build_miniature
    from unlearn_audit.miniature.worlds import build_world

    import contextlib
    import io
    import sys

    log = io.StringIO()  # the builds' progress bars (pytest captures none of sessionstart's output); shown on failure
    try:
        with contextlib.redirect_stderr(log):
            build_miniature()
            for kind in ("tofu", "wmdp"):
                build_world(kind)
    except BaseException:
        sys.stderr.write(log.getvalue())
        raise


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip)


STORIES = Path(__file__).resolve().parent / "fixtures" / "stories260K"
"""karpathy's stories260K (MIT): a real sentencepiece tokenizer, tied embeddings, odd layer widths."""


@pytest.fixture(scope="session")
def stories():
    """stories260K loaded as transformers loads it (float32, eval mode): (model, tokenizer). Tests must not change it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(STORIES)
    model = AutoModelForCausalLM.from_pretrained(STORIES, dtype=torch.float32).eval()
    return model, tok


@pytest.fixture
def tmp_cache(tmp_path: Path) -> Path:
    return tmp_path / "hub"
