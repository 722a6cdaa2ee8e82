"""The real unlearning methods (MUSE's and open-unlearning's losses): each loss against an independent computation on a
real model (stories260K), bfloat16 training as the references run it, and runs that are seeded and leave the original
alone."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from unlearn_audit.miniature.methods import Recipe, kl_to_reference, method_loss, npo_loss, unlearn_with
from unlearn_audit.miniature.train import _batch

FORGET = ["Once upon a time, there was a little girl named Lily.", "The dog ran to the park and saw a big red ball."]
RETAIN = ["Tom liked to eat apples with his mom.", "The sun was hot, so they went to the lake to swim."]


def _perturbed(model):  # noqa: ANN001, ANN202
    """A copy of ``model`` with every parameter moved by 0.01 of Gaussian noise (seeded)."""
    moved = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=generator))
    return moved


def _batches(tok) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:  # noqa: ANN001
    seqs = lambda texts: [ids + [tok.eos_token_id] for ids in tok(texts)["input_ids"]]  # noqa: E731
    return _batch(seqs(FORGET), tok.eos_token_id), _batch(seqs(RETAIN), tok.eos_token_id)


def _summed_nll(model, ids, mask, labels) -> torch.Tensor:  # noqa: ANN001
    """Per sequence: transformers' mean loss of that sequence alone times its scored tokens."""
    out = []
    for i in range(ids.shape[0]):
        n = int(mask[i].sum())
        with torch.no_grad():
            loss = model(input_ids=ids[i:i + 1, :n], labels=labels[i:i + 1, :n]).loss
        out.append(loss * (labels[i, 1:n] != -100).sum())
    return torch.stack(out)


def test_ga_and_gdr_are_transformers_losses(stories):
    model, tok = stories
    forget, retain = _batches(tok)
    with torch.no_grad():
        ga, nll = method_loss(Recipe("ga"), model, None, forget, retain)
        gdr, _ = method_loss(Recipe("ga_gdr", alpha=0.5), model, None, forget, retain)
        f_loss = model(input_ids=forget[0], attention_mask=forget[1], labels=forget[2]).loss
        r_loss = model(input_ids=retain[0], attention_mask=retain[1], labels=retain[2]).loss
    assert float(ga) == pytest.approx(-float(f_loss), rel=1e-5) and nll == pytest.approx(float(f_loss), rel=1e-5)
    assert float(gdr) == pytest.approx(-float(f_loss) + 0.5 * float(r_loss), rel=1e-5)


def test_npo_is_open_unlearnings_formula(stories):
    """-(2/beta) mean log sigmoid(beta (NLL_model - NLL_ref)) over sequences, NLL summed per sequence; a model equal
    to its reference gives (2/beta) log 2."""
    model, tok = stories
    forget, _ = _batches(tok)
    moved = _perturbed(model)
    with torch.no_grad():
        loss = npo_loss(moved, model, *forget, beta=0.1)
        same = npo_loss(model, model, *forget, beta=0.1)
    nll, ref = _summed_nll(moved, *forget), _summed_nll(model, *forget)
    expected = -(2 / 0.1) * F.logsigmoid(0.1 * (nll - ref)).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-4)
    assert float(same) == pytest.approx(2 / 0.1 * torch.log(torch.tensor(2.0)).item(), rel=1e-5)


def test_klr_is_the_kl_to_the_original_per_position(stories):
    """sum_v p_ref (log p_ref - log p_model), averaged over the real (unpadded) positions; zero against itself."""
    model, tok = stories
    _, retain = _batches(tok)
    moved = _perturbed(model)
    with torch.no_grad():
        kl = kl_to_reference(moved, model, *retain[:2])
        zero = kl_to_reference(model, model, *retain[:2])
        total, count = 0.0, 0
        for i in range(retain[0].shape[0]):
            n = int(retain[1][i].sum())
            p_ref = torch.softmax(model(input_ids=retain[0][i:i + 1, :n]).logits[0].double(), -1)
            p_mod = torch.softmax(moved(input_ids=retain[0][i:i + 1, :n]).logits[0].double(), -1)
            total += float((p_ref * (p_ref.log() - p_mod.log())).sum())
            count += n
    assert float(kl) == pytest.approx(total / count, rel=1e-4)
    assert float(zero) == pytest.approx(0.0, abs=1e-6)


def test_runs_are_seeded_leave_the_original_alone_and_bfloat16_drops_small_steps(stories):
    model, tok = stories
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forget = [ids + [tok.eos_token_id] for ids in tok(FORGET)["input_ids"]]
    retain = [ids + [tok.eos_token_id] for ids in tok(RETAIN)["input_ids"]]
    recipe = Recipe("npo_gdr", lr=1e-3, epochs=2, batch_size=2)
    first, log = unlearn_with(model, recipe, forget, retain, pad_id=tok.eos_token_id)
    second, _ = unlearn_with(model, recipe, forget, retain, pad_id=tok.eos_token_id)
    assert log["steps"] == 2
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)  # the original is untouched
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)  # same seed, same model
    assert any(not torch.equal(a, before[n]) for n, a in first.state_dict().items())
    # bfloat16 weights take an AdamW step of about lr; below half a bfloat16 ulp it rounds back: at lr 1e-5 a weight
    # of magnitude 0.1 (ulp 2^-11) cannot move, one below 2^8 * 1e-5 can
    bf16, _ = unlearn_with(model, Recipe("ga", lr=1e-5, epochs=1, batch_size=2, dtype="bfloat16"), forget, retain,
                           pad_id=tok.eos_token_id)
    w0 = model.model.layers[0].mlp.up_proj.weight.detach().to(torch.bfloat16)
    w1 = bf16.model.layers[0].mlp.up_proj.weight.detach()
    assert w1.dtype == torch.bfloat16
    moved = w1 != w0
    assert not moved[w0.float().abs() > 0.01].any()
    assert moved[w0.float().abs() < 1e-3].float().mean() > 0.5


def test_the_worlds_real_runs_forget_and_4bit_brings_nothing_back(world, tmp_path):
    """The MUSE miniature's checkpoints made by real methods (GA_GDR, NPO_GDR at lr 1e-4, MUSE's recipe): they forget
    at full precision, 4-bit RTN and the paper's bitsandbytes FP4 bring back under a quarter of it (the grid of docs/real-runs.md
    measured at most +2% of VerbMem under RTN-4, NF4 and Q4_K_M), the loss screen agrees, and the diagnostic leaves
    the question to the probes."""
    from typer.testing import CliRunner

    from unlearn_audit.cli import app
    from unlearn_audit.miniature.build import REAL_RUNS

    assert {r.name for r in REAL_RUNS} <= set(world.info["training"])
    for recipe in REAL_RUNS:
        out = tmp_path / recipe.name
        result = CliRunner().invoke(app, ["check", f"miniature/{recipe.name}", "--quant", "rtn:4,bnb:fp4",
                                          "--cache-dir", str(world.hub_cache), "--out", str(out)])
        assert result.exit_code in (0, 1, 4), result.output
        record = __import__("json").loads((out / "report.json").read_text())
        runs = {(r["role"], r["variant"]): r["metrics"] for r in record["runs"]}
        assert runs[("original", "full")]["verbmem_f"]["value"] > 95
        assert runs[("unlearned", "full")]["verbmem_f"]["value"] < 50  # it forgot
        net = {(s["metric"], s["variant"]): s for s in record["net_recoveries"]}
        for label in ("rtn:4:g128", "bnb:fp4"):
            assert net[("verbmem_f", label)]["value"] < 0.25, (recipe.name, label)
            assert net[("screen_loss", label)]["value"] < 0.25, (recipe.name, label)
            diag = record["weight_diff"]["overall"][label]
            assert diag["reading"] == "probes decide" and not diag["identical"]
            assert 0.8 < diag["kept"] < 1.2  # the update survives quantization, as a sparse copy of itself
            assert diag["same_code_of_moved"] > 0.5
