"""Bad input raises ValueError or TypeError with a message that names what is
wrong (the command line's own message where the CLI has the same input),
never a crash: Rust errors are mapped, panics do not cross."""

import numpy as np
import pytest

import scoregen
from conftest import ROOT, run_cli
from scoregen.oracle import GaussianMixture
from scoregen.sde import VE, VP

SDE = VP()
GMM8 = GaussianMixture.named("gmm8")


def good(x, t):
    return GMM8.score(x, t, sde=SDE)


def test_arrays_of_the_wrong_kind():
    with pytest.raises(TypeError, match=r"x: expected a numpy array of float32 or float64, found list"):
        GMM8.log_prob([[0.0, 0.0]])
    with pytest.raises(TypeError, match=r"x: expected dtype float32 or float64, found int64"):
        GMM8.log_prob(np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=r"x: expected shape \[N, 2\], found \[3, 3\]"):
        GMM8.score(np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"x: expected shape \[N, 2\], found \[4\]"):
        GMM8.log_prob(np.zeros(4))
    with pytest.raises(ValueError, match=r"t: expected a float or shape \[3\] \(one time per row of x\), found \[2\]"):
        GMM8.score(np.zeros((3, 2)), np.zeros(2), sde=SDE)
    with pytest.raises(ValueError, match="finite"):
        GMM8.log_prob(np.array([[np.nan, 0.0]]))
    with pytest.raises(ValueError, match=r"t: times must lie in \[0, 1\]"):
        SDE.marginal(2.0)


def test_bad_objects():
    with pytest.raises(ValueError, match="not symmetric positive definite"):
        GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]])
    with pytest.raises(ValueError, match="one entry per component"):
        GaussianMixture([0.5, 0.5], [[0.0, 0.0]], [[[1.0, 0.0], [0.0, 1.0]]])
    with pytest.raises(ValueError, match=r"sigma_max must be > sigma_min"):
        VE(1.0, 0.5)
    with pytest.raises(ValueError, match="unknown mixture `nope`"):
        GaussianMixture.named("nope")


def test_sampler_arguments():
    with pytest.raises(ValueError, match=r"sampler: expected one of em, .*, found `nope`"):
        scoregen.sample(good, SDE, (10, 2), sampler="nope")
    with pytest.raises(ValueError, match=r"grid: expected one of uniform-t, karras"):
        scoregen.sample(good, SDE, (10, 2), grid="square")
    with pytest.raises(ValueError, match=r"shape: expected \(N, D, …\)"):
        scoregen.sample(good, SDE, (10,))
    with pytest.raises(TypeError, match="shape: expected a tuple of positive ints"):
        scoregen.sample(good, SDE, "10x2")
    with pytest.raises(TypeError, match="score_fn must be callable"):
        scoregen.sample(3, SDE, (10, 2))
    with pytest.raises(ValueError, match=r"^steps: must be ≥ 1 \(got 0\)$"):
        scoregen.sample(good, SDE, (10, 2), steps=0)
    with pytest.raises(ValueError, match=r"dtype: expected \"float32\" or \"float64\""):
        scoregen.sample(good, SDE, (10, 2), dtype="float16")
    with pytest.raises(ValueError, match="needs an energy model"):
        scoregen.sample(good, SDE, (10, 2), sampler="mala")
    with pytest.raises(ValueError, match="annealed-langevin.*ncsn"):
        scoregen.sample(good, SDE, (10, 2), sampler="annealed-langevin")
    with pytest.raises(ValueError, match=r"trace: expected \"exact\" or \"hutchinson\""):
        scoregen.log_likelihood(good, SDE, np.zeros((3, 2)), trace="approx")


def test_a_bad_score_fn_is_reported_not_crashed():
    with pytest.raises(ValueError, match=r"score_fn returned shape \[10\], expected \[10, 2\]"):
        scoregen.sample(lambda x, t: t, SDE, (10, 2))
    with pytest.raises(TypeError, match=r"score_fn must return a numpy array"):
        scoregen.sample(lambda x, t: 1.0, SDE, (10, 2))

    class Boom(RuntimeError):
        pass

    def boom(x, t):
        raise Boom("from the model")

    with pytest.raises(Boom, match="from the model"):
        scoregen.sample(boom, SDE, (10, 2), sampler="em", steps=5)
    with pytest.raises(Boom):
        scoregen.log_likelihood(boom, SDE, np.zeros((3, 2)))


def test_same_messages_as_the_cli(cli, tmp_path):
    missing = tmp_path / "no-such-run"
    r = run_cli(cli, "sample", "--run", missing)
    assert r.returncode == 1
    with pytest.raises(FileNotFoundError) as e:
        scoregen.Run.load(missing)
    assert str(e.value) in r.stderr, (str(e.value), r.stderr)

    config = ROOT / "configs" / "gmm8-ve.toml"
    r = run_cli(cli, "train", "--config", config, "--out", tmp_path / "t", "--set", "sde.sigma_max=-1")
    assert r.returncode == 1
    with pytest.raises(ValueError) as e:
        scoregen.train(config, out=tmp_path / "t", overrides={"sde.sigma_max": -1})
    assert "sigma_max" in str(e.value) and str(e.value) in r.stderr, (str(e.value), r.stderr)


def test_run_arguments(trained_run):
    run = scoregen.Run.load(trained_run)
    with pytest.raises(ValueError, match=r"x: expected shape \[N, 2\], found \[5, 3\]"):
        run.log_likelihood(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="^sampler: `annealed-langevin` needs a model of the noise ladder"):
        run.sample(10, sampler="annealed-langevin")
    with pytest.raises(ValueError, match=r"^n: must be ≥ 1 \(got 0\)$"):
        run.sample(0)
    with pytest.raises(ValueError, match=r"^steps: must be ≥ 1 \(got 0\)$"):
        run.sample(10, steps=0)
    with pytest.raises(ValueError, match=r"probes must be ≥ 1"):
        run.log_likelihood(np.zeros((5, 2)), trace="hutchinson", probes=0)


def test_a_setting_is_named_by_the_flag_in_the_cli_and_the_keyword_in_python(cli, trained_run, tmp_path):
    """One check in the library (`sampling.n`, `sampling.steps` ≥ 1), two spellings."""
    r = run_cli(cli, "sample", "--run", trained_run, "--n", 0, "--out", tmp_path / "s.npy")
    assert r.returncode == 1 and r.stderr == "error: --n (sampling.n): must be ≥ 1 (got 0)\n", r.stderr
    r = run_cli(cli, "sample", "--run", trained_run, "--steps", 0, "--out", tmp_path / "s.npy")
    assert r.returncode == 1 and r.stderr == "error: --steps (sampling.steps): must be ≥ 1 (got 0)\n", r.stderr
    with pytest.raises(ValueError, match=r"^n: must be ≥ 1 \(got 0\)$"):
        scoregen.Run.load(trained_run).sample(0)
