"""What the peer runners share: the header of a stored peer output and writing it whole or not at all."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path


def header(peer: str, checkout: Path, world: dict) -> dict:
    """The peer, its checkout's commit, the command that ran it, when, and the world it ran on."""
    commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip() or "unknown"
    return {"peer": peer, "commit": commit, "command": " ".join(["python", *sys.argv]),
            "made": datetime.now(timezone.utc).isoformat(timespec="seconds"), "world": world, "models": {}}


def write(out: Path, result: dict) -> None:
    """``result`` as JSON at ``out``, through a ``.partial`` file renamed into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    partial.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    partial.replace(out)
    print(f"wrote {out}")
