"""The model-card view of a record: a Markdown section and the eval-results metadata the Hub reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..analysis.figures import FULL, METRIC_LABELS
from ..support.formatting import percent
from .record import judged_recoveries

SECTION_START = "<!-- unlearn-audit:start -->"
SECTION_END = "<!-- unlearn-audit:end -->"
TASK_NAME = "Machine unlearning audit (unlearn-audit)"
"""Marks this tool's eval results in a card, so a later audit replaces them and keeps everything else."""




def card_section(report: dict[str, Any]) -> str:
    """A self-contained Markdown section, between markers so a later audit can replace it."""
    from .names import variant_name

    verdict = report["verdict"]
    model = report["models"]["unlearned"]["repo"]
    lines = [SECTION_START, "## Unlearning audit (unlearn-audit)", "",
             f"**{verdict['decision']}**: {verdict['headline']}", "",
             f"Audited revision `{(model.get('commit') or 'local')[:12]}` against the original "
             f"`{report['models']['original']['repo']['reference']}` on the forget set `{report['dataset']['reference']}` "
             f"with unlearn-audit {report['tool_version']} ({report['created_at']}).", "",
             "Share of what unlearning removed that each quantized variant brings back (95% bootstrap interval):", "",
             "| metric | variant | recovery | 95% interval |", "|---|---|---|---|"]
    for s in judged_recoveries(report):
        lines.append(f"| {METRIC_LABELS.get(s['metric'], s['metric'])} | {variant_name(s['variant'])} | "
                     f"{percent(s['value'])} | {percent(s['low'])} – {percent(s['high'])} |")
    lines += ["", f"Reproduce: `{report['command'] or 'unlearn-audit check ' + model['reference']}`", SECTION_END, ""]
    return "\n".join(lines)


def eval_results(report: dict[str, Any]) -> list[Any]:
    """huggingface_hub EvalResults: the unlearned model's full-precision metrics and each recovery."""
    from huggingface_hub import EvalResult

    dataset = report["dataset"]
    common = {"task_type": "text-generation", "task_name": TASK_NAME,
              "dataset_type": dataset.get("repo_id") or dataset["reference"], "dataset_name": report["spec"].get("name") or
              dataset["reference"], "dataset_revision": dataset.get("commit")}
    run = next(r for r in report["runs"] if r["role"] == "unlearned" and r["variant"] == FULL)
    results = []
    from ..probes.metrics import METRICS

    for metric in METRICS:  # those the audit's benchmark measured
        value = run["metrics"].get(metric, {}).get("value")
        if value is not None:
            results.append(EvalResult(metric_type=metric, metric_name=METRIC_LABELS[metric], metric_value=round(value, 2),
                                      **common))
    for s in judged_recoveries(report):
        if s["value"] is not None:
            results.append(EvalResult(metric_type=f"recovery_{s['metric']}",
                                      metric_name=f"{METRIC_LABELS.get(s['metric'], s['metric'])} recovered by {s['variant']}",
                                      metric_value=round(s["value"] * 100, 1), metric_config=s["variant"], **common))
    return results


def card_metadata_yaml(report: dict[str, Any]) -> str:
    """The ``model-index`` block (YAML) for the card's metadata."""
    from huggingface_hub import ModelCardData

    name = report["models"]["unlearned"]["repo"]["reference"]
    data = ModelCardData(model_name=name, eval_results=eval_results(report))
    return data.to_yaml()


def update_card(readme: str, report: dict[str, Any]) -> str:
    """``readme`` with the audit section replaced (or appended) and the eval results merged into its metadata."""
    from huggingface_hub import ModelCard

    card = ModelCard(readme) if readme.strip() else ModelCard("---\n---\n")
    fresh = eval_results(report)
    kept = [r for r in (card.data.eval_results or []) if r.task_name != TASK_NAME]
    card.data.eval_results = kept + fresh
    if not card.data.model_name:
        card.data.model_name = report["models"]["unlearned"]["repo"]["reference"]
    text = str(card.text)
    section = card_section(report)
    if SECTION_START in text and SECTION_END in text:
        before, rest = text.split(SECTION_START, 1)
        after = rest.split(SECTION_END, 1)[1]
        text = before + section.rstrip("\n") + after
    else:
        text = text.rstrip("\n") + "\n\n" + section
    return f"---\n{card.data.to_yaml()}\n---\n{text}"


def push_card(rec: dict, folder: Path, repo_id: str, *, create_pr: bool) -> str:
    """Upload the reports and the card change to ``repo_id`` (a pull request unless ``create_pr`` is False)."""
    from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

    from ..errors import ResolutionError

    api = HfApi()
    try:
        try:
            readme = Path(hf_hub_download(repo_id, "README.md")).read_text(encoding="utf-8")
        except EntryNotFoundError:
            readme = ""
        operations = [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=update_card(readme, rec).encode())]
        for name in ("report.json", "report.html", "report.md"):
            if (folder / name).is_file():
                operations.append(CommitOperationAdd(path_in_repo=f"unlearn-audit/{name}", path_or_fileobj=str(folder / name)))
        info = api.create_commit(repo_id, operations=operations, create_pr=create_pr,
                                 commit_message=f"unlearn-audit: {rec['verdict']['decision']}",
                                 commit_description=rec["verdict"]["headline"])
    except RepositoryNotFoundError:
        raise ResolutionError(f"model '{repo_id}' does not exist on the Hub or is not visible to your token",
                              "check the id; log in with `hf auth login` or set HF_TOKEN") from None
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", "?")
        raise ResolutionError(f"the Hub refused the update of '{repo_id}' (HTTP {status})",
                              "use a token with write access to the repo (`hf auth login`)") from None
    return info.pr_url if create_pr and info.pr_url else info.commit_url
