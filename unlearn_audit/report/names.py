"""How every view names a variant: the long name for tables and sentences, the short one for chart axes."""

from __future__ import annotations

from ..analysis.figures import FULL


def variant_name(label: str) -> str:
    """Human name of a variant label: ``rtn:4:g128`` -> ``4-bit RTN (rtn:4:g128)``."""
    if label == FULL:
        return "full precision"
    if "+" in label:  # an attack, then a quantizer
        first, _, then = label.partition("+")
        return f"{_bare(variant_name(first), first)}, then {_bare(variant_name(then), then)} ({label})"
    parts = label.split(":")
    if parts[0] == "rtn" and len(parts) > 1:
        return f"{parts[1]}-bit RTN ({label})"
    if parts[0] == "bnb" and len(parts) > 1:
        return {"fp4": "4-bit bitsandbytes FP4", "nf4": "4-bit bitsandbytes NF4",
                "int8": "8-bit LLM.int8"}.get(parts[1], "bitsandbytes") + f" ({label})"
    if parts[0] in ("gptq", "awq") and len(parts) > 1:
        return f"{parts[1]}-bit {parts[0].upper()} ({label})"
    if parts[0] == "gguf" and len(parts) > 1:
        return f"GGUF {parts[1].upper()} ({label})"
    if parts[0] == "prune" and len(parts) > 1:
        return f"magnitude pruning {float(parts[1]) * 100:g}% ({label})"
    if parts[0] == "relearn-unrelated":
        return f"relearning on unrelated text ({label})"
    if parts[0] == "relearn-forget":
        return f"relearning on half the forget set ({label})"
    if parts[0] == "icl" and len(parts) > 1:
        return f"{parts[1]} in-context examples ({label})"
    if parts[0] == "published" and len(parts) > 1:
        repo, _, file = label.removeprefix("published:").rpartition("/")
        return f"published {file} ({repo})"
    return label


def _bare(name: str, label: str) -> str:
    """A long name without its trailing ``(label)``."""
    return name.removesuffix(f" ({label})")


def short_variant(label: str) -> str:
    """Axis label of a variant: fp (full precision), r4 (rtn:4...), fp4 / nf4 (bnb), i8 (bnb:int8); an attack then a
    quantizer joined by ``+``."""
    if label == FULL:
        return "fp"
    if "+" in label:
        first, _, then = label.partition("+")
        return f"{short_variant(first)}+{short_variant(then)}"
    parts = label.split(":")
    if parts[0] == "rtn":
        return f"r{parts[1]}"
    if parts[0] == "bnb":
        return {"int8": "i8"}.get(parts[1], parts[1]) + ("dq" if "dq" in parts else "")
    if parts[0] == "prune" and len(parts) > 1:
        return f"p{float(parts[1]) * 100:g}"
    if parts[0] == "relearn-unrelated":
        return "rl-u"
    if parts[0] == "relearn-forget":
        return "rl-f"
    if parts[0] == "icl" and len(parts) > 1:
        return f"icl{parts[1]}"
    return parts[0][:4]
