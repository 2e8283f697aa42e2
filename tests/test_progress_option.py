"""``progress=``, the old name of ``progress_bar=``, still works for one release: with a
FutureWarning, the same bar (or none), and an InputDataError when both are given."""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from papa_bayes.demo import DigitsSetup, run_papa, run_session
from papa_bayes.diffusion import (
    DiffusionCandidates,
    DigitsPerson,
    Guidance,
    ManifoldGuard,
    PCAFeatures,
    PixelDiffusion,
    load_digits_splits,
    make_digits_unet,
    make_sampling_scheduler,
    sample,
    sample_preferred,
    select_guidance_scale,
    select_recommendation_scale,
)
from papa_bayes.diffusion.train import fit_default_features, train_base_model
from papa_bayes.exceptions import InputDataError
from papa_bayes.session import PreferenceSession

sys.path.insert(0, str(Path(__file__).parent))
from session_worker import setup as feature_session_setup  # noqa: E402

TINY_UNET = {"block_out_channels": (8, 16), "layers_per_block": 1, "norm_num_groups": 4,
             "down_block_types": ("DownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "UpBlock2D")}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny untrained pixel model, real digits for its guard and features, and a tiny checkpoint."""
    torch.manual_seed(0)
    model = PixelDiffusion(make_digits_unet(**TINY_UNET).eval().requires_grad_(False), make_sampling_scheduler())
    images = load_digits_splits().generator.images[:16]
    checkpoint = tmp_path_factory.mktemp("checkpoint")
    train_base_model(checkpoint, steps=1, batch_size=4, unet_config=TINY_UNET, progress_bar=False)
    phi, guard = PCAFeatures.fit(images, num_features=2), ManifoldGuard(images)
    return SimpleNamespace(model=model, guidance=Guidance(lambda x: x.mean((1, 2, 3))), guard=guard, phi=phi,
                           checkpoint=checkpoint, setup=DigitsSetup(model, phi, guard, DigitsPerson(), (1, 4, 7, 9)))


def _score(x):
    """Ranks and region probabilities of a recommendation pool: any will do here."""
    return x.mean((1, 2, 3)), torch.full((x.shape[0],), 0.5)


def _session_run(t, path, **kw):
    session = PreferenceSession(path, *feature_session_setup()[:2], pool_size=4)
    try:
        session.run(1, **kw)
    finally:
        session.close()


def _run_session(t, path, **kw):
    options = dict(num_base=2, pool_steps=2, recommend_steps=2, scale=1.0, recommend_scale="pool", oversample=1.0)
    _, session, _ = run_session(t.setup, num_labels=1, checkpoints=[1], eval_samples=4, pool_size=2, store=path,
                                candidate_options=options, **kw)
    session.close()


#: The name the warning gives, the callable, its bar's description, and a cheapest call ``(tiny, path, **option)``.
CASES = {
    "sample": (sample, "sampling", lambda t, path, **kw: sample(t.model, 2, num_inference_steps=2, **kw)),
    "sample_preferred": (sample_preferred, "sampling", lambda t, path, **kw: sample_preferred(
        t.model, 2, oversample=1.0, num_inference_steps=2, **kw)),
    "select_guidance_scale": (select_guidance_scale, "sampling", lambda t, path, **kw: select_guidance_scale(
        t.model, t.guidance, t.guard, scales=(1.0,), min_precision=0.5, num_samples=2, num_inference_steps=2, **kw)),
    "select_recommendation_scale": (select_recommendation_scale, "sampling", lambda t, path, **kw: (
        select_recommendation_scale(t.model, t.guidance, score=_score, scales=(1.0,), num_samples=2,
                                    num_inference_steps=2, **kw))),
    "DiffusionCandidates": (DiffusionCandidates, "sampling", lambda t, path, **kw: DiffusionCandidates(
        t.model, t.phi, t.guard, num_base=2, pool_steps=2, **kw)),
    "train_base_model": (train_base_model, "train base UNet", lambda t, path, **kw: train_base_model(
        path, steps=1, batch_size=2, unet_config=TINY_UNET, **kw)),
    "fit_default_features": (fit_default_features, "sampling", lambda t, path, **kw: fit_default_features(
        t.checkpoint, num_samples=2, num_features=1, num_inference_steps=2, **kw)),
    "PreferenceSession.run": (PreferenceSession.run, "labels", _session_run),
    "run_session": (run_session, "region rating", _run_session),
    "run_papa": (run_papa, "PAPA fine-tune", lambda t, path, **kw: run_papa(
        t.setup, label_counts=[2], eval_samples=4, steps=1, eval_steps=2, **kw)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_progress_is_the_old_name_of_progress_bar(name, tiny, tmp_path, capsys):
    function, bar, call = CASES[name]
    shown = not inspect.signature(function).parameters["progress_bar"].default  # the value that is not the default
    capsys.readouterr()
    call(tiny, tmp_path / "new", progress_bar=shown)
    assert (bar in capsys.readouterr().err) == shown
    with pytest.warns(FutureWarning, match=rf"^{re.escape(name)}: progress= is deprecated.* use progress_bar="):
        call(tiny, tmp_path / "old", progress=shown)
    assert (bar in capsys.readouterr().err) == shown  # its value was used, not the default
    with pytest.raises(InputDataError, match="^progress: expected only progress_bar=.*got both progress= and "):
        call(tiny, tmp_path / "both", progress=shown, progress_bar=shown)


@pytest.mark.parametrize("call, field", [
    (lambda t, path: run_session(t.setup, num_labels=2, checkpoints=[1, 5], store=path), "checkpoints"),
    (lambda t, path: run_session(t.setup, num_labels=-1, checkpoints=[0], store=path), "num_labels"),
    (lambda t, path: run_session(t.setup, num_labels=2, checkpoints=2, store=path), "checkpoints"),
    (lambda t, path: run_papa(t.setup, label_counts=[]), "label_counts"),  # was max()'s bare ValueError
    (lambda t, path: run_papa(t.setup, label_counts=[2, -1]), "label_counts"),
])
def test_demo_runs_refuse_label_counts_they_cannot_keep(tiny, tmp_path, call, field):
    # A checkpoint above num_labels made run_session ask more questions than num_labels (its bar overran).
    with pytest.raises(InputDataError, match=f"^{field}: expected"):
        call(tiny, tmp_path / "s.db")
    assert not (tmp_path / "s.db").exists()


def test_run_session_removes_its_temporary_store_when_a_step_raises(tiny, tmp_path, monkeypatch):
    import papa_bayes.demo as demo

    monkeypatch.setattr(demo.tempfile, "gettempdir", lambda: str(tmp_path))

    def broken_step(self):
        raise RuntimeError("the person closed the window")

    monkeypatch.setattr(PreferenceSession, "step", broken_step)
    options = dict(num_base=2, pool_steps=2, recommend_steps=2, scale=1.0, recommend_scale="pool", oversample=1.0)
    with pytest.raises(RuntimeError, match="closed the window"):
        run_session(tiny.setup, num_labels=1, checkpoints=[1], eval_samples=4, pool_size=2,
                    candidate_options=options, progress_bar=False)
    assert not list(tmp_path.glob("papa_bayes_session_*")), "a temporary store nobody can name was left behind"
    named = tmp_path / "named.db"  # a store the caller named is theirs to resume: kept, and closed
    closed = []
    close = PreferenceSession.close
    monkeypatch.setattr(PreferenceSession, "close", lambda self: closed.append(self.store.path) or close(self))
    with pytest.raises(RuntimeError, match="closed the window"):
        run_session(tiny.setup, num_labels=1, checkpoints=[1], eval_samples=4, pool_size=2, store=named,
                    candidate_options=options, progress_bar=False)
    assert named.exists() and [str(p) for p in closed] == [str(named)]
