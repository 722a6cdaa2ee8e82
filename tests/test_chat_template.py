"""KnowMem through a chat template, for instruct models (off by default, as MUSE)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from unlearn_audit.cli import app
from unlearn_audit.inputs.hub import resolve
from unlearn_audit.probes.muse import knowmem_chat_prompt

TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
runner = CliRunner()


def _with_template(world, name: str, dest: Path) -> Path:
    shutil.copytree(resolve(f"miniature/{name}", cache_dir=world.hub_cache, offline=True).path, dest)
    config = dest / "tokenizer_config.json"
    data = json.loads(config.read_text())
    data["chat_template"] = TEMPLATE
    config.write_text(json.dumps(data))
    return dest


def test_chat_prompt_puts_icl_pairs_in_earlier_turns(world, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_with_template(world, "original", tmp_path / "o"))
    text = knowmem_chat_prompt(tok, ["Who?"], ["Ann"], "Where?")
    assert text == f"{tok.bos_token}<|user|>Question: Who?\n<|assistant|>Ann\n<|user|>Question: Where?\n<|assistant|>"


def test_chat_template_audit_runs_and_is_recorded(world, tmp_path):
    u = _with_template(world, "fragile", tmp_path / "u")
    o = _with_template(world, "original", tmp_path / "o")
    result = runner.invoke(app, ["check", str(u), "--original", str(o), "--forget", "miniature/news", "--quant", "rtn:4",
                                 "--chat-template", "--max-items", "2", "--min-items", "1", "--cache-dir",
                                 str(world.hub_cache), "--out", str(tmp_path / "r"), "--format", "json"])
    assert result.exit_code in (0, 1, 4), result.output
    record = json.loads((tmp_path / "r" / "report.json").read_text())
    assert record["config"]["probes"]["chat_template"] is True
    run = next(r for r in record["runs"] if r["role"] == "unlearned" and r["variant"] == "full")
    assert run["details"]["knowmem_f"]["chat_template"] is True


def test_chat_template_without_one_is_refused_before_weights(world, tmp_path):
    result = runner.invoke(app, ["check", "miniature/fragile", "--chat-template", "--cache-dir", str(world.hub_cache),
                                 "--out", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert "has no chat template" in result.output
    assert not (tmp_path / "r" / "report.json").exists()
