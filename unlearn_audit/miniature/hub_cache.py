"""Write repositories into a Hugging Face Hub cache folder, laid out as ``huggingface_hub`` lays it out.

``<cache>/models--org--name/{blobs,snapshots/<commit>,refs/main,trees/<commit>.json}``: blobs are named
by their git object id (sha1 of ``blob <size>\\0<bytes>``) or, for LFS-tracked files (weights, parquet),
by their sha256; snapshot files are relative symlinks into ``blobs``; ``refs/main`` holds the commit.
The commit id is derived from the content, so a rebuilt identical repo gets the identical commit.
This is how the miniature reaches the real resolution code (``snapshot_download`` offline).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin", ".parquet", ".pt", ".pth", ".gguf", ".h5", ".msgpack")


def repo_folder_name(repo_id: str, repo_type: str = "model") -> str:
    """``models--org--name`` / ``datasets--org--name``, as huggingface_hub names cache folders."""
    return f"{repo_type}s--" + repo_id.replace("/", "--")


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_cached_repo(cache_dir: Path, repo_id: str, files: dict[str, bytes], *, repo_type: str = "model",
                      revision: str = "main") -> str:
    """Place ``files`` (path in repo -> content) as one commit of ``repo_id``; returns the commit id.

    An existing cached copy of the repo is replaced.
    """
    storage = Path(cache_dir) / repo_folder_name(repo_id, repo_type)
    if storage.exists():
        shutil.rmtree(storage)
    entries: dict[str, dict] = {}
    for path, data in sorted(files.items()):
        blob_id = _git_blob_id(data)
        entry = {"size": len(data), "blob_id": blob_id}
        if path.endswith(LFS_SUFFIXES):
            entry["lfs_sha256"] = hashlib.sha256(data).hexdigest()
            entry["lfs_size"] = len(data)
        entries[path] = entry
    commit = hashlib.sha1(json.dumps([repo_id, entries], sort_keys=True).encode()).hexdigest()

    (storage / "blobs").mkdir(parents=True)
    snapshot = storage / "snapshots" / commit
    for path, data in files.items():
        entry = entries[path]
        blob_name = entry.get("lfs_sha256", entry["blob_id"])
        blob = storage / "blobs" / blob_name
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / path
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (storage / "refs").mkdir()
    (storage / "refs" / revision).write_text(commit)
    (storage / "trees").mkdir()
    (storage / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": entries}, indent=1))
    return commit


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` as (relative posix path -> bytes)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
