"""Resolve model and dataset references through huggingface_hub (or as local folders).

A reference is a local folder, or a Hub id ``org/name`` resolved with ``snapshot_download`` (so the
usual token sources, ``HF_HUB_OFFLINE``, ``HF_HOME`` and ``HF_HUB_CACHE`` apply). The resolved commit
SHA is recorded, so a report names exactly what was audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, ResolutionError, RuntimeFailure

METADATA_FILES = ["*.json", "*.model", "*.txt", "*.md", "*.yaml", "*.tiktoken", "*.jinja"]
"""Phase one of a model: configs, tokenizer files, card and spec (everything checked before any weight)."""
WEIGHT_FILES = ["*.safetensors"]
PICKLE_FILES = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl"]
MODEL_FILES = METADATA_FILES + WEIGHT_FILES
"""Files fetched for a model: configs, safetensors weights, tokenizer files, card and spec. No code."""
SUBFOLDERS = ["*/*"]
"""Ignored in model repos: ``checkpoint-*/`` folders of an uploaded Trainer output, other variants."""
DATASET_FILES = ["*.parquet", "*.json", "*.md", "*.yaml"]
TOKENIZER_FILES = ["tokenizer*", "*.model", "vocab*", "merges.txt", "special_tokens_map.json", "added_tokens.json",
                   "*.tiktoken", "chat_template*", "config.json"]
"""Files fetched for a tokenizer-only reference (``--tokenizer``, the spec's ``tokenizer``)."""


@dataclass(frozen=True)
class ResolvedRepo:
    """Where a model or dataset reference led.

    Attributes:
        reference: what the user (or spec) gave.
        kind: ``model`` or ``dataset``.
        source: ``hub`` (a Hub id resolved through huggingface_hub) or ``local`` (a folder).
        path: the local folder holding the files.
        repo_id: the Hub id, for ``hub`` sources.
        revision: the revision asked for (branch, tag or commit), if any.
        commit: the commit SHA the revision resolved to (``hub`` sources).
    """

    reference: str
    kind: str
    source: str
    path: Path
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "kind": self.kind, "source": self.source, "path": str(self.path),
                "repo_id": self.repo_id, "revision": self.revision, "commit": self.commit}


def _looks_like_path(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or ref.count("/") != 1 or "\\" in ref


def resolve(reference: str, *, kind: str = "model", revision: str | None = None, cache_dir: Path | None = None,
            offline: bool | None = None, allow_pickle: bool = False, patterns: list[str] | None = None) -> ResolvedRepo:
    """Resolve ``reference`` to a local folder (downloading into the Hub cache when online); ``patterns``
    narrows which files are fetched (default: everything an audit of that kind needs)."""
    local = Path(reference).expanduser()
    if local.is_dir():
        return ResolvedRepo(reference=reference, kind=kind, source="local", path=local.resolve(), revision=revision)
    if _looks_like_path(reference):
        raise InputError(f"{kind} '{reference}' is neither an existing folder nor a Hub id like org/name",
                         "check the path, or give a Hub repo id")
    return _resolve_hub(reference, kind=kind, revision=revision, cache_dir=cache_dir, offline=offline,
                        allow_pickle=allow_pickle, patterns=patterns)


def _resolve_hub(repo_id: str, *, kind: str, revision: str | None, cache_dir: Path | None, offline: bool | None,
                 allow_pickle: bool, patterns: list[str] | None = None) -> ResolvedRepo:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HFValidationError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    if patterns is None:
        patterns = DATASET_FILES if kind == "dataset" else MODEL_FILES + (PICKLE_FILES if allow_pickle else [])
    ignore = None if kind == "dataset" else SUBFOLDERS
    local_only = bool(offline) or bool(constants.HF_HUB_OFFLINE)
    where = f"{kind} '{repo_id}'" + (f" at revision '{revision}'" if revision else "")
    try:
        path = snapshot_download(repo_id, repo_type=kind, revision=revision, cache_dir=cache_dir,
                                 local_files_only=local_only, allow_patterns=patterns,
                                 ignore_patterns=ignore)
    except GatedRepoError:
        raise ResolutionError(f"{where} is gated and no accepted token was found",
                              "accept its terms on the Hub, then `hf auth login` or set HF_TOKEN") from None
    except RevisionNotFoundError:
        raise ResolutionError(f"{where}: the revision does not exist",
                              "check the branch, tag or commit with --revision") from None
    except RepositoryNotFoundError:
        raise ResolutionError(f"{where} does not exist on the Hub or is private",
                              "check the id; for a private repo log in with `hf auth login` or set HF_TOKEN") from None
    except HFValidationError as exc:
        raise InputError(f"'{repo_id}' is not a valid Hub id ({str(exc).splitlines()[0]})",
                         "give org/name or a local folder") from None
    except LocalEntryNotFoundError:
        mode = "offline mode is on (HF_HUB_OFFLINE)" if local_only else "the Hub could not be reached"
        raise ResolutionError(f"{where} is not in the local Hub cache and {mode}",
                              "download it once with network access, point HF_HUB_CACHE at a cache "
                              "that has it, or pass a local folder") from None
    except OSError as exc:
        raise ResolutionError(f"cannot fetch {where}: {exc}", "check the network and disk space, then retry") from None
    except Exception as exc:
        if not _is_transport_error(exc):
            raise
        detail = str(exc).splitlines()[0] if str(exc) else "no detail"
        raise RuntimeFailure(f"the download of {where} broke off ({type(exc).__name__}: {detail})",
                             "check the network and run the command again: huggingface_hub resumes the files "
                             "it had") from None
    folder = Path(path)
    commit = folder.name if folder.parent.name == "snapshots" else None
    return ResolvedRepo(reference=repo_id, kind=kind, source="hub", path=folder, repo_id=repo_id,
                        revision=revision, commit=commit)


def _is_transport_error(exc: Exception) -> bool:
    """A connection that failed or broke off mid-transfer, as huggingface_hub's HTTP client (httpx) raises it."""
    try:
        import httpx2
    except ImportError:  # an older huggingface_hub on httpx
        try:
            import httpx as httpx2
        except ImportError:
            return False
    return isinstance(exc, httpx2.TransportError)


def card_metadata(folder: Path) -> dict[str, Any]:
    """The YAML metadata block of ``README.md`` in ``folder`` (empty when there is none)."""
    readme = folder / "README.md"
    if not readme.is_file():
        return {}
    from huggingface_hub import metadata_load

    try:
        return metadata_load(readme) or {}
    except Exception as exc:  # malformed YAML in a card the user did not write
        raise InputError(f"the model card {readme} has malformed metadata ({exc})",
                         "fix the YAML block at the top of README.md, or pass --original and --spec") from None


def base_model_of(folder: Path) -> str | None:
    """The card's ``base_model`` (first one if a list)."""
    base = card_metadata(folder).get("base_model")
    if isinstance(base, list):
        base = base[0] if base else None
    return base if isinstance(base, str) and base else None


def weight_patterns(folder: Path, allow_pickle: bool) -> list[str]:
    """Phase two of a model: the top-level weight files its index names (a sharded checkpoint), else every
    top-level safetensors file (and pickles where allowed)."""
    import json

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{index} is not a valid safetensors index", "re-upload the checkpoint's index") from None
        return shards
    return WEIGHT_FILES + (PICKLE_FILES if allow_pickle else [])


def indexed_shards(folder: Path) -> list[str] | None:
    """The shard files ``model.safetensors.index.json`` names, or None without an index."""
    index = folder / "model.safetensors.index.json"
    return weight_patterns(folder, allow_pickle=False) if index.is_file() else None


def stale_weight_files(folder: Path) -> list[str]:
    """Top-level safetensors files beside a sharded index that the index does not name (a consolidated
    ``model.safetensors`` left from an earlier upload): transformers would load them instead of the shards."""
    shards = indexed_shards(folder)
    if shards is None:
        return []
    return sorted(p.name for p in folder.glob("*.safetensors") if p.name not in shards)


def without_stale_weights(repo: ResolvedRepo, views: Path) -> ResolvedRepo:
    """``repo`` as a folder of links to everything but its stale weight files (see
    :func:`stale_weight_files`), so every reader — transformers, GPT-QModel, the diagnostic — sees the
    index's shards only. Unchanged when there are none."""
    import hashlib
    from dataclasses import replace

    stale = stale_weight_files(repo.path)
    if not stale:
        return repo
    view = views / hashlib.sha256(str(repo.path.resolve()).encode()).hexdigest()[:16]
    if view.exists():
        import shutil

        shutil.rmtree(view)
    view.mkdir(parents=True)
    for entry in repo.path.iterdir():
        if entry.name not in stale:
            (view / entry.name).symlink_to(entry.resolve())
    return replace(repo, path=view)


def fetch_weights(repo: ResolvedRepo, *, cache_dir: Path | None, offline: bool | None,
                  allow_pickle: bool) -> ResolvedRepo:
    """Fetch a phase-one model's weights into the same snapshot (no-op for a local folder)."""
    if repo.source != "hub" or repo.repo_id is None:
        return repo
    patterns = weight_patterns(repo.path, allow_pickle)
    return _resolve_hub(repo.repo_id, kind="model", revision=repo.commit or repo.revision, cache_dir=cache_dir,
                        offline=offline, allow_pickle=allow_pickle, patterns=patterns)


def fingerprint_folder(folder: Path) -> dict[str, Any]:
    """A local folder's identity without reading its weights: file names, sizes, modification times."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    return {"files": [[str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]}
