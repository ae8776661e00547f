"""A trained run from Python: the same numbers as the command line."""

import json

import numpy as np
import pytest

import scoregen
from conftest import ROOT, run_cli


@pytest.mark.parametrize("sampler,steps,grid", [("dpmpp-2m", 20, None), ("em", 50, None), ("heun", 10, "uniform-t")])
def test_sample_is_bit_for_bit_the_cli(cli, trained_run, tmp_path, sampler, steps, grid):
    out = tmp_path / "x.npy"
    args = ["sample", "--run", trained_run, "--sampler", sampler, "--steps", steps, "--n", 300, "--seed", 7, "--out", out]
    if grid:
        args += ["--grid", grid]
    r = run_cli(cli, *args)
    assert r.returncode == 0, r.stderr
    want = np.load(out)
    got = scoregen.Run.load(trained_run).sample(300, sampler=sampler, steps=steps, grid=grid, seed=7)
    assert got.dtype == want.dtype == np.float32 and got.shape == (300, 2)
    assert np.array_equal(got, want), np.abs(got - want).max()
    other = scoregen.Run.load(trained_run).sample(300, sampler=sampler, steps=steps, grid=grid, seed=8)
    assert not np.array_equal(other, want)


def test_log_likelihood_is_the_cli(cli, trained_run, tmp_path):
    x = scoregen.oracle.GaussianMixture.named("gmm8").sample(40, seed=2).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = run_cli(cli, "--json", "likelihood", "--run", trained_run, "--data", tmp_path / "x.npy")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    nats, bpd = scoregen.Run.load(trained_run).log_likelihood(x)
    assert nats.shape == bpd.shape == (40,)
    assert nats.mean() == pytest.approx(report["mean_nats"], rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(bpd, -nats / (2 * np.log(2)), rtol=1e-12)


def test_score_and_properties(trained_run):
    run = scoregen.Run.load(trained_run)
    assert run.dim == 2 and run.step == 300 and run.name == "gmm8-ve" and run.sde.name == "ve"
    x = np.random.default_rng(0).standard_normal((10, 2))
    s = run.score(x, 0.5)
    assert s.shape == (10, 2) and s.dtype == np.float64
    np.testing.assert_allclose(run.score(x, np.full(10, 0.5)), s)
    np.testing.assert_allclose(run.score(x.astype(np.float32), 0.5), s, rtol=1e-6, atol=1e-6)


def test_train_calls_progress_and_stops_when_it_raises(tmp_path):
    lines = []
    out = scoregen.train(ROOT / "configs" / "gmm8-vp.toml", out=tmp_path / "a",
                         overrides={"training.steps": 60, "training.log_every": 20}, progress=lines.append)
    assert [d["step"] for d in lines] == [20, 40, 60] and out["step"] == 60
    assert all(np.isfinite(d["loss"]) for d in lines)

    class Stop(Exception):
        pass

    def stop(line):
        if line["step"] >= 40:
            raise Stop("enough")

    with pytest.raises(Stop, match="enough"):
        scoregen.train(ROOT / "configs" / "gmm8-vp.toml", out=tmp_path / "b",
                       overrides={"training.steps": 100, "training.log_every": 20}, progress=stop)


def test_class_conditional_sample_is_the_cli(cli, tmp_path):
    """A class-conditional gmm8 run: `class_="all"` (every component in the data's
    proportions, one label per row) and `class_=3` with guidance give the CLI's
    `--class all` / `--class 3 --guidance 2` numbers bit for bit; without a class
    the run samples its unconditional score; guidance without a class is refused."""
    run = tmp_path / "cond"
    scoregen.train(
        ROOT / "configs" / "gmm8-vp.toml",
        out=run,
        overrides={"training.steps": 60, "training.checkpoint_every": 60, "model.classes": 8},
    )
    loaded = scoregen.Run.load(run)
    for flags, kwargs in [(["--class", "all", "--guidance", "0"], {"class_": "all", "guidance": 0.0}),
                          (["--class", "3", "--guidance", "2"], {"class_": 3, "guidance": 2.0})]:
        out = tmp_path / f"{kwargs['class_']}.npy"
        r = run_cli(cli, "sample", "--run", run, "--n", 80, "--steps", 10, "--seed", 4, "--out", out, *flags)
        assert r.returncode == 0, r.stderr
        got = loaded.sample(80, steps=10, seed=4, sampler=loaded_sampler(loaded), **kwargs)
        assert np.array_equal(got, np.load(out)), kwargs
    plain = loaded.sample(80, steps=10, seed=4, sampler=loaded_sampler(loaded))
    assert not np.array_equal(plain, np.load(tmp_path / "all.npy")), "no class: the unconditional score"
    with pytest.raises(ValueError, match="^guidance: guidance needs a class"):
        loaded.sample(10, steps=5, guidance=1.0)
    with pytest.raises(ValueError, match=r"^class_: 12 is out of range: classes are 0\.\.7$"):
        loaded.sample(10, steps=5, class_=12)
    r = run_cli(cli, "sample", "--run", run, "--n", 10, "--steps", 5, "--class", 12, "--out", tmp_path / "x.npy")
    assert r.returncode == 1 and "--class (sampling.class): 12 is out of range: classes are 0..7\n" in r.stderr, r.stderr
    with pytest.raises(ValueError, match="class_"):
        loaded.sample(10, steps=5, class_="most")


def loaded_sampler(run) -> str:
    """The run's configured sampler, as `scoregen sample` uses without --sampler."""
    for line in run.config.splitlines():
        if line.strip().startswith("sampler ="):
            return line.split("=", 1)[1].strip().strip('"')
    raise AssertionError("no sampler in the config")
