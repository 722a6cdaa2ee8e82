"""Safe model loading: safetensors first, pickled weights refused, remote code off unless asked."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, RuntimeFailure, UnsafeModelError
from ..support.noise import quiet_transformers
from .hub import ResolvedRepo
from .widen import widen_in_place, widen_route

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass
class LoadedModel:
    """A causal LM, its tokenizer, and where it came from."""

    model: Any
    tokenizer: Any
    repo: ResolvedRepo
    dtype: str
    n_parameters: int
    device_map: str | None = None


def linear_weight_names(model: Any) -> list[str]:
    from torch import nn

    return [f"{name}.weight" for name, module in model.named_modules() if type(module) is nn.Linear]


def quantizable_linears(model: Any, include_lm_head: bool) -> tuple[list[tuple[str, Any]], list[str]]:
    """(name, layer) of the linear layers a weight edit takes (the quantizers, the tamper battery's attacks), and the
    names of those left alone: ``lm_head`` unless ``include_lm_head``; embeddings and norms are not linear layers."""
    from torch import nn

    chosen, skipped = [], []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            if name.split(".")[-1] == "lm_head" and not include_lm_head:
                skipped.append(name)
            else:
                chosen.append((name, module))
    return chosen, skipped


def _stored_names(model: Any, index: dict[str, Path]) -> dict[str, str] | None:
    """Each parameter's name in the checkpoint: its own, or, for a tied weight (``lm_head`` sharing the
    embedding matrix, as Llama-3.2-1B, Gemma, SmolLM2 and small Qwen2.5 do), the name of the parameter it
    shares storage with. Every parameter found is listed (a GGUF variant quantizes embeddings too); None
    when some linear weight is stored under no name."""
    aliases: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
    linear = set(linear_weight_names(model))
    stored = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if name in index:
            stored[name] = name
            continue
        twin = next((n for n in aliases.get(id(param), []) if n in index), None)
        if twin is None:
            if name in linear:
                return None
            continue
        stored[name] = twin
    return stored


def restorable(model: Any, folder: Path) -> bool:
    """Whether every linear weight of ``model`` is stored in ``folder``'s safetensors, under its own name or
    that of the parameter it is tied to (so :func:`restore_weights` can undo an in-place quantization
    without a second copy of the model)."""
    from .checkpoint import tensor_index

    if offloaded(model):
        return False
    try:
        index = tensor_index(folder)
    except InputError:
        return False
    return _stored_names(model, index) is not None


def offloaded(model: Any) -> bool:
    """Whether ``--device-map auto`` left some weights off every device (on ``meta``, kept on CPU or disk by
    accelerate and loaded layer by layer): they cannot be quantized or restored in place."""
    return any(p.device.type == "meta" for p in model.parameters())


def restore_weights(model: Any, folder: Path) -> None:
    """Put the checkpoint's values back into ``model``'s parameters (after an in-place quantization),
    streaming one tensor at a time from safetensors, so a variant needs no second copy of the model.
    Call only where :func:`restorable` holds."""
    import torch

    from .checkpoint import load_tensor, tensor_index

    index = tensor_index(folder)
    with torch.no_grad():
        for name, stored in (_stored_names(model, index) or {}).items():
            param = model.get_parameter(name)
            param.copy_(load_tensor(index[stored], stored).to(dtype=param.dtype, device=param.device))


def check_files(folder: Path, *, trust_remote_code: bool, allow_pickle: bool, label: str | None = None,
                need_weights: bool = True) -> None:
    """Refuse checkpoints that would execute code: remote code (``auto_map``) or pickled weights.
    ``label`` names the model in messages (default: the folder). ``need_weights=False`` checks the
    config alone (before any weight is fetched)."""
    name = label or str(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InputError(f"{name} has no config.json, so it is not a transformers model",
                         "point at a model repo or folder with config.json and weights")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"{config_path} is not valid JSON ({exc})", "fix or re-download the model") from None
    if config.get("auto_map") and not trust_remote_code:
        raise UnsafeModelError(f"{name} needs custom code from its repo (auto_map in config.json)",
                               "review the code, then pass --trust-remote-code to run it")
    if not need_weights:
        return
    files = [p.name for p in folder.iterdir() if p.is_file()]
    has_safetensors = any(name.endswith(".safetensors") for name in files)
    has_pickle = any(name.endswith(_PICKLE_SUFFIXES) for name in files)
    if not has_safetensors:
        if has_pickle and not allow_pickle:
            raise UnsafeModelError(f"{name} has only pickled weights (.bin/.pt), which can run code when loaded",
                                   "ask the publisher for safetensors, or pass --allow-pickle if you trust it")
        if not has_pickle:
            raise InputError(f"{name} has no weight files", "check that the repo holds model weights")


TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer.tiktoken", "vocab.txt")
"""Files any of which means a folder carries its own tokenizer."""


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_MARKERS)


def load_tokenizer(repo: ResolvedRepo, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a resolved folder (cheap: used to check compatibility before any weights)."""
    from transformers import AutoTokenizer

    quiet_transformers()
    config = repo.path / "config.json"
    if config.is_file():
        check_files(repo.path, trust_remote_code=trust_remote_code, allow_pickle=True, label=repo.reference,
                    need_weights=False)
    if not has_tokenizer(repo.path):
        raise InputError(f"{repo.reference} holds no tokenizer files ({', '.join(TOKENIZER_MARKERS[:2])}, ...)",
                         "pass --tokenizer REPO (or set tokenizer: in the spec) to name the tokenizer it was "
                         "trained with")
    try:
        tokenizer = AutoTokenizer.from_pretrained(repo.path, trust_remote_code=trust_remote_code)
        if _sentencepiece_bos_default(repo.path) and tokenizer.bos_token_id is not None:
            # transformers 5 builds a sentencepiece-only repo's tokenizer without BOS, where the sentencepiece
            # LlamaTokenizer these checkpoints were trained and evaluated with (and MUSE) adds it
            tokenizer.add_bos_token = True
            tokenizer.unlearn_audit_bos_note = "BOS added, as the sentencepiece LlamaTokenizer does by default"
        return tokenizer
    except (OSError, ValueError, ImportError, AttributeError, TypeError) as exc:
        text = str(exc)
        sentencepiece = (repo.path / "tokenizer.model").is_file() and not (repo.path / "tokenizer.json").is_file()
        if sentencepiece and ("tiktoken" in text or "sentencepiece" in text.lower() or "protobuf" in text.lower()):
            raise InputError(f"the tokenizer of {repo.reference} is a sentencepiece model (tokenizer.model) and "
                             "the sentencepiece or protobuf package is missing",
                             "pip install sentencepiece protobuf") from None
        raise InputError(f"cannot load the tokenizer of {repo.reference}: {text.splitlines()[0] if text else type(exc).__name__}",
                         "the repo must hold complete tokenizer files, or pass --tokenizer REPO") from None


def _sentencepiece_bos_default(folder: Path) -> bool:
    """A repo with only a sentencepiece ``tokenizer.model`` whose config does not say whether to add BOS."""
    if not (folder / "tokenizer.model").is_file() or (folder / "tokenizer.json").is_file():
        return False
    config = folder / "tokenizer_config.json"
    try:
        settings = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
    except ValueError:
        return False
    return "add_bos_token" not in settings


def describe_tokenizer(tokenizer: Any, folder: Path, texts: list[str]) -> dict[str, Any]:
    """What the record says about a tokenizer: its class, the file it was built from, whether it adds BOS,
    and, when the folder holds both ``tokenizer.json`` and a sentencepiece ``tokenizer.model``, on how many
    of ``texts`` the two give different ids (transformers loads ``tokenizer.json``; the difference is
    usually the BOS token or leading spaces)."""
    import shutil
    import tempfile

    from transformers import AutoTokenizer

    built_from = "tokenizer.json" if (folder / "tokenizer.json").is_file() else next(
        (name for name in TOKENIZER_MARKERS if (folder / name).is_file()), None)
    sample = tokenizer("a")["input_ids"]
    info: dict[str, Any] = {"class": type(tokenizer).__name__, "built_from": built_from,
                            "adds_bos": bool(tokenizer.bos_token_id is not None and sample[:1] == [tokenizer.bos_token_id]),
                            "vocab_size": len(tokenizer)}
    if getattr(tokenizer, "unlearn_audit_bos_note", None):
        info["note"] = tokenizer.unlearn_audit_bos_note
    if built_from == "tokenizer.json" and (folder / "tokenizer.model").is_file() and texts:
        with tempfile.TemporaryDirectory() as tmp:
            for item in folder.iterdir():
                if item.is_file() and item.name != "tokenizer.json" and item.suffix in (".json", ".model", ".txt"):
                    shutil.copy(item, tmp)
            try:
                other = AutoTokenizer.from_pretrained(tmp)
            except Exception as exc:  # the sentencepiece file alone may not load; say so, don't fail
                info["sentencepiece_check"] = f"tokenizer.model alone does not load ({type(exc).__name__})"
                return info
        differ = sum(tokenizer(t)["input_ids"] != other(t)["input_ids"] for t in texts)
        info["sentencepiece_check"] = {"texts": len(texts), "differ": int(differ)}
    return info


def load_model(repo: ResolvedRepo, *, device: str = "cpu", dtype: str = "float32", device_map: str | None = None,
               trust_remote_code: bool = False, allow_pickle: bool = False, tokenizer: Any = None,
               quantization_config: Any = None) -> LoadedModel:
    """Load a causal LM (and its tokenizer, unless given) from a resolved folder, safely; with
    ``quantization_config``, transformers quantizes it while loading (bitsandbytes, GPTQ...).
    ``device_map="auto"`` spreads a model too large for one device over the available ones (accelerate)."""
    import torch
    from transformers import AutoModelForCausalLM

    quiet_transformers()

    check_files(repo.path, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, label=repo.reference)
    has_safetensors = any(p.suffix == ".safetensors" for p in repo.path.iterdir())
    torch_dtype = getattr(torch, dtype)
    try:
        extra: dict[str, Any] = {}
        if quantization_config is not None:
            extra["quantization_config"] = quantization_config
            if device != "cpu":
                extra["device_map"] = {"": device}
        if device_map is not None:
            extra["device_map"] = device_map
        narrow = None  # a 16-bit checkpoint in a float32 run on CPU: loaded as stored, widened tensor by tensor
        if (has_safetensors and quantization_config is None and device_map is None and device == "cpu"
                and not trust_remote_code):
            narrow = widen_route(repo.path, _config(repo.path), dtype)
        model = AutoModelForCausalLM.from_pretrained(
            repo.path, dtype=getattr(torch, narrow) if narrow else torch_dtype, trust_remote_code=trust_remote_code,
            use_safetensors=True if has_safetensors else False, **extra)
        if narrow:
            widen_in_place(model, torch_dtype)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc) or "AutoModelForCausalLM" in str(exc):
            raise InputError(f"{repo.reference} is not a causal language model",
                             "audit a decoder-only (causal LM) checkpoint") from None
        raise InputError(f"cannot load {repo.reference}: {str(exc).splitlines()[0]}",
                         "check that the checkpoint is complete and matches its config") from None
    except (OSError, RuntimeError) as exc:
        if "out of memory" in str(exc).lower():
            raise RuntimeFailure(f"out of memory while loading {repo.reference}",
                                 "use a machine with more memory or a smaller model") from None
        raise RuntimeFailure(f"cannot load {repo.reference}: {str(exc).splitlines()[0]}",
                             "re-download the model; check disk and memory") from None
    if tokenizer is None:
        tokenizer = load_tokenizer(repo, trust_remote_code=trust_remote_code)
    if quantization_config is None and device_map is None:
        model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, repo=repo, dtype=dtype, device_map=device_map,
                       n_parameters=sum(p.numel() for p in model.parameters()))


def _config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def check_same_tokenizer(ref_a: str, tokenizer_a: Any, ref_b: str, tokenizer_b: Any) -> None:
    """Original and unlearned must share a vocabulary, or their outputs cannot be compared."""
    if tokenizer_a.get_vocab() != tokenizer_b.get_vocab():
        raise InputError(f"{ref_a} and {ref_b} use different tokenizers",
                         "pass --original with the model this checkpoint was unlearned from")
