"""lm-evaluation-harness's own ``wmdp`` and ``mmlu`` task templates pointed at the miniature's parquet files: the
one place the peer-parity suite and ``bench_peers.py`` describe the tasks they hand the harness."""

from __future__ import annotations

from pathlib import Path

TASKS = ("wmdp_mini", "mmlu_mini")


def task_manager(folder: Path, wmdp: Path, mmlu: Path):
    """A ``TaskManager`` knowing ``wmdp_mini`` (the harness's WMDP template on ``wmdp/wmdp-bio``) and ``mmlu_mini``
    (its MMLU template on ``mmlu/stories``), their YAML files written into ``folder``.

    Only the dataset and the subject in the description change; MMLU's template reads a ``dev`` split for few-shot
    examples even at zero shots and the miniature has none, so the test file stands in (zero-shot: nothing of it
    reaches a prompt)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    templates = Path(lm_eval.__file__).parent / "tasks"
    folder.mkdir(parents=True, exist_ok=True)
    for task, template, parquet, subject in (
            ("wmdp_mini", templates / "wmdp" / "_default_template_yaml", wmdp / "wmdp-bio", "biology"),
            ("mmlu_mini", templates / "mmlu" / "default" / "_default_template_yaml", mmlu / "stories", "stories")):
        file = next(parquet.glob("test-*.parquet"))
        (folder / f"{task}.yaml").write_text(
            f"include: {template}\ntask: {task}\ndataset_path: parquet\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    test: {file}\n    dev: {file}\n"
            f'description: "The following are multiple choice questions (with answers) about {subject}.\\n\\n"\n')
    return TaskManager(include_path=str(folder))
