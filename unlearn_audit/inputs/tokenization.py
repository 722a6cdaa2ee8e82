"""Which tokenizer each audited model is probed with, and why.

Real checkpoints often ship without one: MUSE's targets are evaluated with the tokenizer of
``meta-llama/Llama-2-7b-hf`` (MUSE's ``--tokenizer_dir``), and many fine-tunes upload weights only. The
rule, per model: ``--tokenizer`` if given (for every model); else the model's own tokenizer files; else
the spec's ``tokenizer``; else the original model's. The record says which was used for each model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from .hub import TOKENIZER_FILES, ResolvedRepo, resolve
from .models import has_tokenizer, load_tokenizer


@dataclass
class TokenizerChoice:
    """The tokenizer one model is probed with.

    Attributes:
        tokenizer: the loaded tokenizer.
        repo: where its files came from.
        how: why that source (``--tokenizer``, ``the model's own``, ``the spec's tokenizer``, ``the original's``).
    """

    tokenizer: Any
    repo: ResolvedRepo
    how: str

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.repo.reference, "commit": self.repo.commit, "how": self.how}


def choose_tokenizers(models: dict[str, ResolvedRepo], *, explicit: str | None, explicit_revision: str | None,
                      spec_tokenizer: str | None, spec_revision: str | None, cache_dir: Path | None,
                      offline: bool | None, trust_remote_code: bool) -> dict[str, TokenizerChoice]:
    """A tokenizer for each role in ``models`` (which must include ``original``), loaded once per source."""
    loaded: dict[str, tuple[Any, ResolvedRepo]] = {}

    def load(ref: str, revision: str | None) -> tuple[Any, ResolvedRepo]:
        if ref not in loaded:
            repo = resolve(ref, revision=revision, cache_dir=cache_dir, offline=offline, patterns=TOKENIZER_FILES)
            loaded[ref] = (load_tokenizer(repo, trust_remote_code=trust_remote_code), repo)
        return loaded[ref]

    def own(repo: ResolvedRepo) -> tuple[Any, ResolvedRepo]:
        key = f"own:{repo.path}"
        if key not in loaded:
            loaded[key] = (load_tokenizer(repo, trust_remote_code=trust_remote_code), repo)
        return loaded[key]

    choices: dict[str, TokenizerChoice] = {}
    if explicit:
        tok, repo = load(explicit, explicit_revision)
        return {role: TokenizerChoice(tok, repo, "--tokenizer") for role in models}
    for role, repo in models.items():
        if has_tokenizer(repo.path):
            tok, src = own(repo)
            choices[role] = TokenizerChoice(tok, src, "the model's own")
        elif spec_tokenizer:
            tok, src = load(spec_tokenizer, spec_revision)
            choices[role] = TokenizerChoice(tok, src, "the spec's tokenizer")
        elif role != "original" and has_tokenizer(models["original"].path):
            tok, src = own(models["original"])
            choices[role] = TokenizerChoice(tok, src, "the original's")
        else:
            raise InputError(f"{repo.reference} holds no tokenizer files and no other tokenizer is named",
                             "pass --tokenizer REPO (for MUSE models: meta-llama/Llama-2-7b-hf), or set tokenizer: "
                             "in the spec")
    return choices
