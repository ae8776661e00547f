"""Training from memory: a config dict and a NumPy array give an ordinary
run folder, which the command line samples and resumes."""

import numpy as np
import pytest

import scoregen
from conftest import ROOT, run_cli

CONFIG = {
    "name": "memory-gmm",
    "seed": 3,
    "sde": {"kind": "vp"},
    "model": {"kind": "time-mlp", "width": 64, "depth": 2},
    "training": {"steps": 300, "batch_size": 256, "lr": 2e-3, "checkpoint_every": 300, "log_every": 100},
    "sampling": {"sampler": "em", "steps": 100, "n": 500},
}


def two_blobs(n=2000, seed=0):
    """Half the points near (−2, 0), half near (+2, 0): labels 0 and 1."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    x = np.stack([4.0 * labels - 2.0, np.zeros(n)], 1) + 0.3 * rng.standard_normal((n, 2))
    return x.astype(np.float32), labels


def test_train_on_an_array_then_sample_with_the_cli(cli, tmp_path):
    x, _ = two_blobs()
    out = tmp_path / "run"
    res = scoregen.train(CONFIG, data=x, out=out, report=False)
    assert res["step"] == 300
    saved = np.load(out / "data.npy")
    assert np.array_equal(saved, x)
    r = run_cli(cli, "sample", "--run", out, "--n", 1000, "--seed", 1, "--out", tmp_path / "s.npy")
    assert r.returncode == 0, r.stderr
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (1000, 2)
    # it learned the data it was given, not the config's default source (gmm8, radius 4)
    left = s[:, 0] < 0
    assert 0.35 < left.mean() < 0.65, left.mean()
    near = np.hypot(np.abs(s[:, 0]) - 2.0, s[:, 1]) < 1.0  # gmm8's modes (radius 4) are all ≥ 2 away
    assert near.mean() > 0.6, near.mean()  # measured 0.75 after 300 steps; gmm8 would give ≈ 0
    # the same numbers from Python, and the run resumes from the command line
    assert np.array_equal(scoregen.Run.load(out).sample(1000, sampler="em", steps=100, seed=1), s)
    r = run_cli(cli, "train", "--config", out / "config.toml", "--out", out, "--resume",
                "--set", "training.steps=310", "--no-report")
    assert r.returncode == 0, r.stderr


def test_labels_make_a_class_conditional_run(cli, tmp_path):
    x, labels = two_blobs(seed=1)
    cfg = {**CONFIG, "model": {**CONFIG["model"], "classes": "auto"}}
    out = tmp_path / "cond"
    scoregen.train(cfg, data=x, labels=labels, out=out, report=False)
    assert np.array_equal(np.load(out / "data.labels.npy")[:, 0], labels)
    r = run_cli(cli, "sample", "--run", out, "--n", 400, "--class", 1, "--guidance", 2, "--seed", 0,
                "--out", tmp_path / "c.npy")
    assert r.returncode == 0, r.stderr
    s = np.load(tmp_path / "c.npy")
    assert (s[:, 0] > 0).mean() > 0.9  # class 1 is the blob at +2


def test_images_in_memory(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.uniform(-1, 1, (64, 1, 8, 8)).astype(np.float32)
    cfg = {"name": "mem-img", "model": {"kind": "unet", "channels": 8, "channel_mult": [1, 2], "groups": 4,
                                        "attention": False},
           "training": {"steps": 2, "batch_size": 8, "checkpoint_every": 2}}
    scoregen.train(cfg, data=imgs, out=tmp_path / "img", report=False)
    run = scoregen.Run.load(tmp_path / "img")
    assert run.dim == 64
    assert np.load(tmp_path / "img" / "data.npy").shape == (64, 1, 8, 8)


def test_bad_memory_input_is_refused(tmp_path):
    x, labels = two_blobs(100)
    with pytest.raises(ValueError, match=r"data: expected shape \[N, D\] or \[N, C, H, W\]"):
        scoregen.train(CONFIG, data=x[:, 0], out=tmp_path / "a")
    with pytest.raises(ValueError, match="labels: expected one label per row of data"):
        scoregen.train(CONFIG, data=x, labels=labels[:-1], out=tmp_path / "b")
    with pytest.raises(ValueError, match="labels: expected integers"):
        scoregen.train(CONFIG, data=x, labels=labels - 0.5, out=tmp_path / "c")
    with pytest.raises(ValueError, match="training.stepz|unknown field"):
        scoregen.train({"training": {"stepz": 3}}, data=x, out=tmp_path / "d")
    with pytest.raises(TypeError, match="config: expected a path"):
        scoregen.train(3, data=x, out=tmp_path / "e")


def test_a_dict_config_is_the_toml_file(tmp_path):
    """The same config as a dict and as the preset's file: the same weights."""
    import tomllib

    path = ROOT / "configs" / "gmm8-vp.toml"
    as_dict = tomllib.loads(path.read_text())
    over = {"training.steps": 20, "training.checkpoint_every": 20}
    scoregen.train(path, out=tmp_path / "file", overrides=over, report=False)
    scoregen.train(as_dict, out=tmp_path / "dict", overrides=over, report=False)
    a, b = scoregen.Run.load(tmp_path / "file"), scoregen.Run.load(tmp_path / "dict")
    x = np.random.default_rng(0).standard_normal((5, 2))
    assert np.array_equal(a.score(x, 0.3), b.score(x, 0.3))
