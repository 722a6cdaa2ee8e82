"""Commands that look without auditing: diff (the weight diagnostic alone), and the quantizers, attacks and probes
the tool has."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UsageError
from .common import CacheOpt, DeviceOpt, QuantOpt, _split, app, guarded, out, reporter


@app.command()
def diff(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="The unlearned model: Hub id or local folder.")],
    original: Annotated[str, typer.Option("--original", help="The model it was unlearned from.")],
    quant: QuantOpt = ["rtn:4,rtn:8,bnb:fp4,bnb:nf4,bnb:int8"],
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the figures as JSON here.")] = None,
    layers: Annotated[bool, typer.Option(help="Show every layer, not only the totals.")] = False,
    dtype: Annotated[str, typer.Option(
        help="Compare as an audit in this dtype would (the narrower of it and the unlearned checkpoint's dtype).")] = "float32",
    device: DeviceOpt = "auto",
    cache_dir: CacheOpt = None,
    offline: Annotated[bool, typer.Option("--offline", help="Resolve from the local cache only.")] = False,
) -> None:
    """Without any data: does each quantizer map the unlearned weights back onto the original's levels?"""

    def run() -> int:
        from rich.markup import escape

        from ..config import resolve_device
        from ..inputs.hub import resolve
        from ..quantize import parse_variants
        from ..quantize.diagnostic import weight_diff
        from ..report.record import write_atomic

        if dtype not in ("float32", "bfloat16", "float16"):
            raise UsageError(f"unknown dtype '{dtype}'", "use float32, bfloat16 or float16")
        quantizers = parse_variants(_split(quant))
        u = resolve(model, cache_dir=cache_dir, offline=offline or None)
        o = resolve(original, cache_dir=cache_dir, offline=offline or None)
        with reporter() as progress:
            result = weight_diff(u.path, o.path, quantizers, labels=(u.reference, o.reference), run_dtype=dtype,
                                 device=resolve_device(device),
                                 progress=lambda total: progress.task("weight diagnostic", total))
        out.print(diff_table(result.as_dict(), layers=layers))
        for label, why in result.not_compared.items():
            out.print(f"{escape(label)}: not compared ({escape(why)})", soft_wrap=True)
        if json_out is not None:
            import json

            write_atomic(json_out, json.dumps(result.as_dict(), indent=2))
        return 0

    raise typer.Exit(guarded(run))


def _layer_name(name: str) -> str:
    """A linear layer's name as short as it stays clear: ``model.layers.3.self_attn.q_proj.weight`` -> ``3.attn.q_proj``."""
    short = re.sub(r"^(model\.|transformer\.|gpt_neox\.)*(decoder\.)?(layers|h|blocks)\.", "", name.removesuffix(".weight"))
    return short.replace("self_attn.", "attn.")


def diff_table(record: dict, *, layers: bool = False):  # noqa: ANN201
    """The weight diagnostic as rich tables that fit 80 columns: the totals, and with ``layers`` one table of every
    layer per quantizer (layer names shortened; nothing is cut: long labels and readings wrap)."""
    from rich import box
    from rich.console import Group
    from rich.table import Table

    def table(title: str, first: str) -> Table:
        t = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
        for column in (first, "moved", "same", "grid", "kept", "cos", "flips", "reading"):
            numeric = column not in (first, "reading")
            t.add_column(column, justify="right" if numeric else "left", no_wrap=numeric,
                         overflow="fold" if column == first else "ellipsis")
        return t

    def pct(x: float | None, digits: int = 1) -> str:
        return "n/a" if x is None else f"{x * 100:.{digits}f}%"

    def num(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    def cells(d: dict) -> list[str]:
        return [pct(d["moved"]), pct(d["same_code_of_moved"], 2), pct(d.get("scale_change_mean",
                d.get("scale_change_max"))), num(d.get("kept")), num(d.get("cosine")),
                num(d.get("flip_ratio")), d.get("reading", "identical" if d.get("identical") else "")]

    totals = table(f"{record['unlearned']} vs {record['original']}, compared in {record['compare_dtype']}", "quantizer")
    others = record.get("others_moved") or []
    totals.caption = ("moved: share of linear weights unlearning changed; same: of those, share whose level in "
                      "Q(unlearned) equals Q(original)'s; grid: mean change of the groups' scales; kept: "
                      "<Q(u)-Q(o), u-o>/|u-o|^2, the share of the update quantization keeps; cos: its cosine with the "
                      "update; flips: changed levels against those expected if each weight sat at a random place "
                      "in its cell. Reading: recovery certain only where the quantized models are identical; "
                      "otherwise the probes decide. "
                      + (f"{len(others)} tensors no quantizer here changes (embeddings, norms, lm_head...) also moved. "
                         if others else "") + "See docs/diagnostic.md.")
    shown = [totals]
    for label in record["quantizers"]:
        if label in record["overall"]:
            totals.add_row(label, *cells(record["overall"][label]))
        if layers and record["layers"].get(label):
            per_layer = table(f"{label}, layer by layer", "layer")
            for row in record["layers"][label]:
                per_layer.add_row(_layer_name(row["name"]), *cells(row))
            shown.append(per_layer)
    return Group(*shown)


def _entry(head: str, lines: list[str]) -> None:
    """A listing entry: its head in bold, then each line indented by two (wrapped lines stay indented)."""
    import textwrap

    from rich.markup import escape

    out.print(f"[bold]{escape(head)}[/]")
    width = max(40, min(out.width, 100))
    for line in lines:
        out.print(escape(textwrap.fill(line, width=width, initial_indent="  ", subsequent_indent="  ")),
                  soft_wrap=True)


@app.command()
def quantizers() -> None:
    """List the quantization methods, their --quant syntax and what each needs."""
    from ..quantize import METHODS, PRESETS

    for info in METHODS.values():
        _entry(f"{info.name}  e.g. {info.example}", [info.summary, f"needs: {info.needs}"])
    for name, variants in PRESETS.items():
        _entry(f"{name}  (a preset: --quant {name})", [", ".join(variants)])


@app.command()
def attacks() -> None:
    """List the attacks of the tamper battery (--attack), their syntax, defaults and sources."""
    from ..attacks import ATTACKS

    for info in ATTACKS.values():
        _entry(f"{info.name}  e.g. {info.example}", [info.summary, f"source: {info.source}"])
    _entry("battery", ["every attack above at its defaults: --attack battery"])


@app.command()
def probes() -> None:
    """List the probes of each benchmark (muse, tofu, wmdp: the spec's benchmark field), in the order an audit runs them,
    and the forget data each reads."""
    from ..probes.registry import PROBES

    for info in PROBES.values():
        runs = "always" if info.required else "when its data is present"
        reads = f"reads: {', '.join(info.needs)}" if info.needs else "reads: the texts its summary names"
        _entry(f"{info.name}  ({info.benchmark}: {info.kind}, {runs})", [info.summary, reads])
