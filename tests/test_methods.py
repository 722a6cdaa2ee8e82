"""The real unlearning methods (MUSE's and open-unlearning's losses): each loss against an independent computation on a
real model (stories260K), bfloat16 training as the references run it, and runs that are seeded and leave the original
alone."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import numpy as np

from unlearn_audit.miniature.methods import (
    Recipe,
    kl_to_reference,
    method_loss,
    npo_loss,
    saliency_mask,
    schedule,
    unlearn_with,
)
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


def test_npo_klr_is_npo_plus_the_kl_term(stories):
    """The paper's sixth method: open-unlearning's NPO on the forget batch plus alpha times the per-position KL on
    the retain batch, each computed here by the functions tested above."""
    model, tok = stories
    forget, retain = _batches(tok)
    moved = _perturbed(model)
    with torch.no_grad():
        loss, _ = method_loss(Recipe("npo_klr", alpha=0.7), moved, model, forget, retain)
        expected = npo_loss(moved, model, *forget, beta=0.1) + 0.7 * kl_to_reference(moved, model, *retain[:2])
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def _unpadded_logits(model, ids, mask) -> list[torch.Tensor]:  # noqa: ANN001
    """Each sequence's logits alone, without its padding (double precision)."""
    with torch.no_grad():
        return [model(input_ids=ids[i:i + 1, :int(mask[i].sum())]).logits[0].double()
                for i in range(ids.shape[0])]


def test_the_papers_loss_forms_are_its_released_formulas(stories):
    """form="paper": NPO on the raw logits element by element, MUSE's KL on raw logits divided by the batch, SURE's
    KL on the softmax divided by the batch; written here over each sequence alone, element by element."""
    model, tok = stories
    forget, retain = _batches(tok)
    moved = _perturbed(model)
    lf_m, lf_r = _unpadded_logits(moved, *forget[:2]), _unpadded_logits(model, *forget[:2])
    npo_terms = torch.cat([F.logsigmoid(0.1 * (r - m)).flatten() for m, r in zip(lf_m, lf_r)])
    npo = -(2 / 0.1) * npo_terms.mean()
    lr_m, lr_r = _unpadded_logits(moved, *retain[:2]), _unpadded_logits(model, *retain[:2])
    muse_kl = sum(float((r.exp() * (r - m)).sum()) for m, r in zip(lr_m, lr_r)) / len(lr_m)
    sure_kl = 0.0
    for m, r in zip(lr_m, lr_r):
        p_ref = torch.softmax(r, -1)
        sure_kl += float((p_ref * (p_ref.log() - torch.log_softmax(m, -1))).sum())
    sure_kl /= len(lr_m)
    with torch.no_grad():
        got_npo, _ = method_loss(Recipe("npo", form="paper"), moved, model, forget, retain)
        got_klr, _ = method_loss(Recipe("npo_klr", form="paper"), moved, model, forget, retain)
        got_sure, _ = method_loss(Recipe("npo_klr", form="paper", sure=90), moved, model, forget, retain)
    assert float(got_npo) == pytest.approx(float(npo), rel=1e-4)
    assert float(got_klr) - float(got_npo) == pytest.approx(muse_kl, rel=1e-4)
    assert float(got_sure) - float(got_npo) == pytest.approx(sure_kl, rel=1e-4)


def test_sure_mask_is_the_global_percentile_of_row_gradient_norms(stories):
    """Per output row the L2 norm of the forget gradient (per entry for 1-D parameters), the threshold numpy's
    percentile over every row of the model, computed here row by row."""
    model, tok = stories
    forget, retain = _batches(tok)
    moved = copy.deepcopy(model)
    loss, _ = method_loss(Recipe("ga"), moved, None, forget, retain)
    loss.backward()
    rows = {}
    for name, p in moved.named_parameters():
        g = p.grad.double()
        rows[name] = [float(g[i].pow(2).sum().sqrt()) if g.dim() > 1 else abs(float(g[i])) for i in range(g.shape[0])]
    gamma = np.percentile([v for r in rows.values() for v in r], 90)
    mask = saliency_mask(moved, 90)
    for name, values in rows.items():
        expected = [v >= gamma for v in values]
        close = [abs(v - gamma) < 1e-6 * gamma for v in values]  # float32 vs float64 at the threshold
        got = mask[name].tolist()
        assert all(e == g or c for e, g, c in zip(expected, got, close)), name
    share = sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())
    assert share == pytest.approx(0.10, abs=0.01)


def test_sure_updates_only_salient_rows_on_the_first_step(stories):
    """After one SURE step (AdamW, no earlier moments), exactly the rows of the first step's mask moved."""
    model, tok = stories
    forget = [ids + [tok.eos_token_id] for ids in tok(FORGET)["input_ids"]]
    retain = [ids + [tok.eos_token_id] for ids in tok(RETAIN)["input_ids"]]
    recipe = Recipe("ga_gdr", lr=1e-3, steps=1, batch_size=2, sure=95)
    out, log = unlearn_with(model, recipe, forget, retain, pad_id=tok.eos_token_id)
    probe = copy.deepcopy(model)
    f_batch = _batch([forget[i] for i in schedule(recipe, len(forget))[0]], tok.eos_token_id)
    loss, _ = method_loss(Recipe("ga"), probe, None, f_batch, f_batch)
    loss.backward()
    mask = saliency_mask(probe, 95)
    before, after = dict(model.named_parameters()), dict(out.named_parameters())
    salient_moved = []
    for name, keep in mask.items():
        changed = after[name] != before[name]
        moved_rows = changed.flatten(1).any(dim=1) if changed.dim() > 1 else changed
        assert not moved_rows[~keep].any(), name
        salient_moved.append(moved_rows[keep])
    assert torch.cat(salient_moved).float().mean() > 0.9
    assert log["sure_updated_row_share"] == pytest.approx(0.05, abs=0.01)


def test_a_run_resumed_from_its_checkpoint_equals_an_uninterrupted_one(stories, tmp_path):
    """Stopped after 3 of 5 steps (checkpoint written), then run again: the same weights as a run never stopped,
    bit for bit, in bfloat16 with AdamW's bfloat16 state (the paper's regime)."""
    model, tok = stories
    forget = [ids + [tok.eos_token_id] for ids in tok(FORGET * 3)["input_ids"]]
    retain = [ids + [tok.eos_token_id] for ids in tok(RETAIN)["input_ids"]]
    recipe = Recipe("npo_klr", lr=1e-3, steps=5, batch_size=2, dtype="bfloat16", form="paper")
    whole, log = unlearn_with(model, recipe, forget, retain, pad_id=tok.eos_token_id)
    state = tmp_path / "run.pt"
    part, part_log = unlearn_with(model, recipe, forget, retain, pad_id=tok.eos_token_id, checkpoint=state,
                                  checkpoint_every=2, stop_after=3)
    assert part_log["steps"] == 3 and state.is_file()
    saved = torch.load(state, weights_only=True)
    assert saved["step"] == 3 and all(v.dtype == torch.bfloat16 for v in saved["optimizer"]["state"][0].values()
                                       if torch.is_tensor(v) and v.dim())
    resumed, resumed_log = unlearn_with(model, recipe, forget, retain, pad_id=tok.eos_token_id, checkpoint=state,
                                        checkpoint_every=2)
    assert resumed_log["resumed_at_step"] == 3 and resumed_log["steps"] == log["steps"] == 5
    assert resumed_log["forget_nll_first_step"] == log["forget_nll_first_step"]
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    other = Recipe("npo_klr", lr=2e-3, steps=5, batch_size=2, dtype="bfloat16", form="paper")
    _, fresh = unlearn_with(model, other, forget, retain, pad_id=tok.eos_token_id, checkpoint=state)
    assert fresh["resumed_at_step"] == 0  # another recipe's checkpoint is not taken


def test_schedule_counts_steps_across_epochs():
    recipe = Recipe("ga", steps=7, batch_size=2)
    batches = schedule(recipe, 5)  # 3 batches an epoch: 3 + 3 + 1
    assert len(batches) == 7 and sorted(i for b in batches[:3] for i in b) == list(range(5))
    assert sorted(i for b in batches[3:6] for i in b) == list(range(5))
    assert len(schedule(Recipe("ga", epochs=2, batch_size=2), 5)) == 6
    assert Recipe("ga_klr", sure=90, steps=1000, batch_size=2, dtype="bfloat16", form="paper").name == \
        "ga_klr-sure90-lr1e-05-bf16-s1000-b2-paper"
    with pytest.raises(ValueError, match="percentile"):
        Recipe("ga", sure=100)


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
