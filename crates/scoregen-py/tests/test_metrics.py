"""scoregen.metrics.evaluate decides image vs mixture as `scoregen eval` does
(one function in the library), so an image target gets the image metrics."""

import gzip
import json

import numpy as np
import pytest

import scoregen
from conftest import ROOT, run_cli


def real_digits(n: int) -> np.ndarray:
    """The last n of scikit-learn's digits (the vendored CSV the library reads),
    in the data space [−1, 1] the digits runs and classifiers use, float32."""
    with gzip.open(ROOT / "crates" / "scoregen-core" / "data" / "digits.csv.gz", "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.float32)
    pixels = rows[-n:, :64] / np.float32(16.0)
    return (2.0 * pixels.astype(np.float64) - 1.0).astype(np.float32)


def test_image_target_gives_the_cli_image_metrics(cli, tmp_path, monkeypatch):
    """300 real digits against "digits": Python returns the same numbers as
    `scoregen eval --json` on the same .npy, bit for bit, through the default
    classifier folder classifiers/digits and an explicit one; real digits sit
    near the held-out floor and are classified like the held-out images."""
    monkeypatch.chdir(tmp_path)
    r = run_cli(cli, "train-classifier", "--data", "digits", "--steps", 200, "--width", 8, "--blocks", 1)
    assert r.returncode == 0, r.stderr
    samples = real_digits(300)
    np.save(tmp_path / "real.npy", samples)
    r = run_cli(cli, "--json", "eval", "--samples", tmp_path / "real.npy", "--target", "digits")
    assert r.returncode == 0, r.stderr
    want = json.loads(r.stdout)

    got = scoregen.metrics.evaluate(samples, "digits")
    assert got == want
    assert scoregen.metrics.evaluate(samples, "digits", classifier=tmp_path / "classifiers" / "digits") == want
    assert set(got) >= {"fd", "fd_floor", "class_histogram", "memorization_ratio", "classifier_accuracy"}
    assert got["n"] == 300
    assert 0.0 <= got["fd"] < 2.0 * got["fd_floor"], (got["fd"], got["fd_floor"])
    assert abs(got["class_entropy"] - got["max_entropy"]) < 0.1

    with pytest.raises(ValueError, match="elsewhere"):
        scoregen.metrics.evaluate(samples, "digits", classifier=tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="dimension 2"):
        scoregen.metrics.evaluate(np.zeros((10, 2), np.float32), "digits")


def test_point_targets_still_get_the_point_metrics(cli, tmp_path):
    """A mixture name is the mixture branch in both front ends, same numbers."""
    mix = scoregen.oracle.GaussianMixture.named("gmm8")
    pts = mix.sample(400, seed=2).astype(np.float32)
    np.save(tmp_path / "pts.npy", pts)
    r = run_cli(cli, "--json", "eval", "--samples", tmp_path / "pts.npy", "--target", "gmm8", "--seed", 3)
    assert r.returncode == 0, r.stderr
    assert scoregen.metrics.evaluate(pts, "gmm8", seed=3) == json.loads(r.stdout)
