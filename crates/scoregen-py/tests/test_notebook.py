"""Notebook-friendly: the library's loops drawn as tqdm bars (one per loop,
its length and every step counted), quiet without tqdm or with
progress_bar=False; a Run's _repr_html_ with its settings and a picture of
its samples (the figure `scoregen sample` draws, inlined as a PNG)."""

import base64
import importlib.util
import re

import numpy as np
import pytest

import scoregen
import scoregen._progress
from conftest import ROOT, require, run_cli


class Recorder:
    """Stands in for tqdm: records each bar's total, label, updates and closing."""

    def __init__(self):
        self.bars = []

    def factory(self, progress_bar):
        if progress_bar is False:
            return None

        def make(total, desc):
            bar = {"total": total, "desc": desc, "n": 0, "updates": 0, "closed": False}
            self.bars.append(bar)

            class Bar:
                def update(self, k):
                    bar["n"] += k
                    bar["updates"] += 1

                def close(self):
                    bar["closed"] = True

            return Bar()

        return make


@pytest.fixture
def recorder(monkeypatch):
    r = Recorder()
    monkeypatch.setattr(scoregen._progress, "factory", r.factory)
    return r


def test_sampling_and_training_show_one_bar_per_loop(recorder, trained_run, tmp_path):
    run = scoregen.Run.load(trained_run)
    x = run.sample(100, sampler="em", steps=37, seed=1, progress_bar=True)
    assert [(b["total"], b["n"], b["closed"]) for b in recorder.bars] == [(37, 37, True)]
    # the bars change nothing in the numbers
    assert np.array_equal(x, run.sample(100, sampler="em", steps=37, seed=1, progress_bar=False))
    assert len(recorder.bars) == 1
    recorder.bars.clear()
    for sampler in ["em", "dpmpp-2m"]:  # any score, through scoregen.sample
        scoregen.sample(scoregen.oracle.GaussianMixture.named("gmm8"), run.sde, (50, 2), sampler=sampler, steps=23,
                        progress_bar=True)
    assert [(b["total"], b["n"], b["desc"]) for b in recorder.bars] == [(23, 23, "sample")] * 2
    recorder.bars.clear()
    run.inpaint(x[:4], "half", sampler="em", steps=11, progress_bar=True)
    assert [(b["total"], b["n"], b["desc"]) for b in recorder.bars] == [(11, 11, "inpaint")]
    recorder.bars.clear()
    scoregen.train(ROOT / "configs" / "gmm8-ve.toml", out=tmp_path / "r", report=False, progress_bar=True,
                   overrides={"training.steps": 60, "training.checkpoint_every": 60})
    assert [(b["total"], b["n"], b["desc"], b["closed"]) for b in recorder.bars] == [(60, 60, "train", True)]
    recorder.bars.clear()
    scoregen.train_classifier(data="gmm8", steps=25, width=4, out=tmp_path / "c", progress_bar=True)
    assert [(b["total"], b["n"], b["desc"]) for b in recorder.bars] == [(25, 25, "classifier")]


def test_bars_follow_tqdm_and_the_terminal(monkeypatch):
    have = importlib.util.find_spec("tqdm") is not None
    require(have, "tqdm is not installed")
    assert scoregen._progress.factory(False) is None
    assert callable(scoregen._progress.factory(True))
    monkeypatch.setattr(scoregen._progress, "_interactive", lambda: False)
    assert scoregen._progress.factory(None) is None  # a script's log, as the CLI's bars off a terminal
    monkeypatch.setattr(scoregen._progress, "_interactive", lambda: True)
    bar = scoregen._progress.factory(None)(5, "sample")
    bar.update(5)
    assert bar.n == 5 and bar.total == 5
    bar.close()


def test_without_tqdm_there_are_no_bars(monkeypatch, trained_run):
    import builtins

    real = builtins.__import__

    def no_tqdm(name, *a, **k):
        if name.startswith("tqdm"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    assert scoregen._progress.factory(None) is None
    with pytest.raises(ImportError, match="progress_bar=True needs tqdm"):
        scoregen.Run.load(trained_run).sample(10, steps=3, progress_bar=True)


def _png(html):
    m = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert m, html
    png = base64.b64decode(m.group(1), validate=True)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return png


def test_repr_html_shows_settings_and_the_samples(cli, trained_run, tmp_path):
    run = scoregen.Run.load(trained_run)
    html = run._repr_html_()
    assert "gmm8-ve" in html and "<table>" in html and "em (" in html
    assert "No samples yet" in html and "base64" not in html
    run.sample(300, sampler="em", steps=20, seed=3, progress_bar=False)
    html = run._repr_html_()
    png = _png(html)
    assert "300 (drawn by this Run" in html
    # the picture is the figure `scoregen sample` writes beside its .npy, byte for byte
    r = run_cli(cli, "sample", "--run", trained_run, "--n", 300, "--sampler", "em", "--steps", 20, "--seed", 3,
                "--out", tmp_path / "x.npy")
    assert r.returncode == 0, r.stderr
    assert png == (tmp_path / "x.png").read_bytes()
    # other samples, another picture
    run.sample(300, sampler="em", steps=20, seed=4, progress_bar=False)
    assert _png(run._repr_html_()) != png
    # a fresh Run shows the run's saved samples
    (trained_run / "samples").mkdir(exist_ok=True)
    np.save(trained_run / "samples" / "samples.npy", np.load(tmp_path / "x.npy"))
    html = scoregen.Run.load(trained_run)._repr_html_()
    assert "300 (samples/samples.npy)" in html and len(_png(html)) > 1000
    (trained_run / "samples" / "samples.npy").unlink()
