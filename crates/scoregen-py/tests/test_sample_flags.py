"""Every flag of `scoregen sample` and `scoregen inpaint` from Python: the
same keywords give the CLI's numbers bit for bit (one app function applies
them: `SamplerOverrides::apply`, `inpaint_loaded`), and a value the CLI
refuses is refused with the same message, the flag's name as the keyword."""

import numpy as np
import pytest

import scoregen
from conftest import ROOT, run_cli


def _train(tmp_path_factory, preset, steps, **extra):
    out = tmp_path_factory.mktemp("runs") / preset
    overrides = {"training.steps": steps, "training.checkpoint_every": steps, **extra}
    scoregen.train(ROOT / "configs" / f"{preset}.toml", out=out, overrides=overrides, report=False)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, trained_run):
    return {
        "ve": trained_run,
        "vp": _train(tmp_path_factory, "gmm8-vp", 100),
        "ncsn": _train(tmp_path_factory, "ncsn-gmm8", 50),
        "energy": _train(tmp_path_factory, "sliced-energy-gmm8", 50),
    }


# (run, CLI flags, Python keywords): each flag of SamplerArgs at least once
CASES = [
    ("ve", ["--sampler", "pc", "--corrector", "langevin", "--snr", 0.2, "--steps", 20],
     dict(sampler="pc", snr=0.2, corrector="langevin", steps=20)),
    ("ve", ["--sampler", "em", "--corrector", "ald", "--steps", 20], dict(sampler="em", corrector="ald", steps=20)),
    ("vp", ["--sampler", "ode", "--rtol", 1e-3, "--atol", 1e-4], dict(sampler="ode", rtol=1e-3, atol=1e-4)),
    ("ve", ["--sampler", "heun", "--churn", 0.7, "--grid", "karras", "--steps", 10],
     dict(sampler="heun", churn=0.7, grid="karras", steps=10)),
    ("vp", ["--sampler", "ddim", "--eta", 0.5, "--clip-denoised", "--clip-range", 2.5, "--steps", 15],
     dict(sampler="ddim", eta=0.5, clip_denoised=True, clip_range=2.5, steps=15)),
    ("vp", ["--sampler", "ddim", "--threshold", 0.9, "--keep-model-eps", "--vp-start", "--grid", "trailing",
            "--steps", 15],
     dict(sampler="ddim", threshold=0.9, keep_model_eps=True, vp_start=True, grid="trailing", steps=15)),
    ("ncsn", ["--sampler", "annealed-langevin", "--eps", 1e-4, "--steps-per-level", 5],
     dict(sampler="annealed-langevin", eps=1e-4, steps_per_level=5)),
    ("energy", ["--sampler", "mala", "--eps", 0.01, "--steps", 30], dict(sampler="mala", eps=0.01, steps=30)),
    ("energy", ["--sampler", "langevin", "--eps", 0.02, "--steps", 30], dict(sampler="langevin", eps=0.02, steps=30)),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_every_sample_flag_gives_the_cli_numbers(cli, runs, tmp_path, case):
    name, flags, kwargs = CASES[case]
    run_dir = runs[name]
    out = tmp_path / "x.npy"
    r = run_cli(cli, "sample", "--run", run_dir, "--n", 200, "--seed", 5, "--out", out, *flags)
    assert r.returncode == 0, r.stderr
    want = np.load(out)
    got = scoregen.Run.load(run_dir).sample(200, seed=5, **kwargs)
    assert got.shape == want.shape and np.isfinite(got).all()
    assert np.array_equal(got, want), np.abs(got - want).max()
    # the keyword is not ignored: leaving it out changes the numbers
    key = next(k for k in kwargs if k not in ("sampler", "steps"))
    default = {k: v for k, v in kwargs.items() if k != key}
    if key == "threshold":
        default.pop("keep_model_eps")
    if key == "clip_denoised":
        default.pop("clip_range")
    assert not np.array_equal(scoregen.Run.load(run_dir).sample(200, seed=5, **default), want), key


# (flags, keywords, the refused setting's key): checked in the app layer, spelled by each front end
BAD = [
    (["--eta", 2], dict(sampler="ddim", eta=2.0), "sampling.eta"),
    (["--eps=-1"], dict(eps=-1.0), "sampling.step_size"),
    (["--steps-per-level", 0], dict(steps_per_level=0), "sampling.steps_per_level"),
    (["--churn=-1"], dict(churn=-1.0), "sampling.s_churn"),
    (["--threshold", 1.5], dict(threshold=1.5), "sampling.threshold"),
    (["--threshold", 0.9, "--clip-denoised"], dict(threshold=0.9, clip_denoised=True), "sampling.threshold"),
    (["--snr", 0], dict(snr=0.0), "sampling.snr"),
    (["--clip-range", 0], dict(clip_range=0.0), "sampling.clip_range"),
    (["--sampler", "em", "--keep-model-eps"], dict(sampler="em", keep_model_eps=True), "sampling.keep_model_eps"),
    (["--sampler", "em", "--vp-start"], dict(sampler="em", vp_start=True), "sampling.vp_start"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_a_bad_value_is_refused_with_the_cli_message(cli, runs, tmp_path, case):
    flags, kwargs, key = BAD[case]
    kwargs = {"sampler": "dpmpp-2m", **kwargs}
    if "--sampler" not in flags:
        flags = ["--sampler", kwargs["sampler"], *flags]
    r = run_cli(cli, "sample", "--run", runs["vp"], "--n", 10, "--out", tmp_path / "x.npy", *flags)
    assert r.returncode == 1
    with pytest.raises(ValueError) as e:
        scoregen.Run.load(runs["vp"]).sample(10, **kwargs)
    keyword, _, message = str(e.value).partition(": ")
    flag = {"sampling.step_size": "eps", "sampling.s_churn": "churn"}.get(key, key.split(".")[1])
    assert keyword == flag
    assert r.stderr == f"error: --{flag.replace('_', '-')} ({key}): {message}\n", (r.stderr, str(e.value))


def test_classifier_guidance_reaches_the_same_check(cli, runs, tmp_path):
    missing = tmp_path / "no-classifier"
    r = run_cli(cli, "sample", "--run", runs["vp"], "--n", 10, "--class", 0, "--classifier", missing,
                "--out", tmp_path / "x.npy")
    assert r.returncode == 1
    with pytest.raises(ValueError) as e:
        scoregen.Run.load(runs["vp"]).sample(10, class_=0, classifier=missing)
    assert str(e.value) in r.stderr, (str(e.value), r.stderr)


@pytest.mark.parametrize("sampler", [None, "pc", "reverse-diffusion", "annealed-langevin"])
def test_inpaint_gives_the_cli_numbers(cli, runs, tmp_path, sampler):
    name = "ncsn" if sampler == "annealed-langevin" else "vp"  # gmm8-vp's own sampler: em
    x = scoregen.oracle.GaussianMixture.named("gmm8").sample(6, seed=1).astype(np.float32)
    np.save(tmp_path / "obs.npy", x)
    out = tmp_path / "done.npy"
    flags = ["--sampler", sampler] if sampler else []
    r = run_cli(cli, "inpaint", "--run", runs[name], "--input", tmp_path / "obs.npy", "--mask", "half",
                "--per-input", 3, "--steps", 20, "--seed", 4, "--out", out, *flags)
    assert r.returncode == 0, r.stderr
    want = np.load(out)
    run = scoregen.Run.load(runs[name])
    got = run.inpaint(x, "half", per_input=3, sampler=sampler, steps=20, seed=4)
    assert got.shape == (18, 2) and np.array_equal(got, want), np.abs(got - want).max()
    # the known coordinate is held (to the observation at the end), the other one filled in
    np.testing.assert_allclose(got[:, 0], np.repeat(x[:, 0], 3), atol=0.05)
    assert np.abs(got[:, 1] - np.repeat(x[:, 1], 3)).max() > 0.05
    # a mask given as an array is the same mask
    same = run.inpaint(x, np.array([1.0, 0.0]), per_input=3, sampler=sampler, steps=20, seed=4)
    assert np.array_equal(same, got)
    if sampler in ("pc", "reverse-diffusion"):  # the keyword is not ignored
        assert not np.array_equal(run.inpaint(x, "half", per_input=3, steps=20, seed=4), got)


def test_inpaint_refusals(runs):
    run = scoregen.Run.load(runs["vp"])
    x = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="mask: values must be 0"):
        run.inpaint(x, np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="leaves nothing to fill in"):
        run.inpaint(x, np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="box needs images"):
        run.inpaint(x, "box")
    with pytest.raises(ValueError, match="per-input and --steps must be ≥ 1"):
        run.inpaint(x, "half", per_input=0)
    with pytest.raises(ValueError, match=r"x: expected shape \[N, 2\]"):
        run.inpaint(np.zeros((2, 3)), "half")


def _png_gray(path, pixels):
    """A grayscale 8-bit PNG of `pixels` [H, W] (uint8), written by hand (no imaging library needed)."""
    import struct
    import zlib

    h, w = pixels.shape
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\0" + bytes(row) for row in pixels.astype(np.uint8))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """digits-vp trained for 10 steps: an image run, for inputs only images have."""
    return _train(tmp_path_factory, "digits-vp", 10)


def test_inpaint_takes_the_cli_inputs(cli, runs, digits_run, tmp_path):
    """`--input`'s forms (held-out[:N], a .npy path, a PNG path) as `x`: the CLI's numbers."""
    run = scoregen.Run.load(digits_run)
    held = run.inpaint("held-out:2", "half", steps=3, seed=1)
    assert held.shape == (2, 1, 8, 8)
    img = np.arange(64).reshape(8, 8) * 4
    _png_gray(tmp_path / "d.png", img)
    np.save(tmp_path / "d.npy", (img.reshape(1, 1, 8, 8) / 255.0 * 2 - 1).astype(np.float32))
    for source in ["held-out:2", tmp_path / "d.png", tmp_path / "d.npy", str(tmp_path / "d.png")]:
        out = tmp_path / "o.npy"
        r = run_cli(cli, "inpaint", "--run", digits_run, "--input", source, "--mask", "half", "--steps", 3,
                    "--seed", 1, "--per-input", 2, "--out", out, "--overwrite")
        assert r.returncode == 0, r.stderr
        want = np.load(out)
        got = run.inpaint(source, "half", steps=3, seed=1, per_input=2)
        assert got.shape == want.shape and np.array_equal(got, want), source
    # the PNG is the same image as the .npy (pixels mapped by the run's scale), top half held
    png, npy = run.inpaint(tmp_path / "d.png", "half", steps=3), run.inpaint(tmp_path / "d.npy", "half", steps=3)
    np.testing.assert_allclose(png, npy, rtol=1e-5, atol=1e-6)  # the .npy went through float32
    np.testing.assert_allclose(png[0, 0, :4], img[:4] / 255.0 * 2 - 1, atol=1e-6)
    # refusals name the keyword (the CLI's --input is x)
    with pytest.raises(ValueError, match=r"^x: held-out:N needs a count, found `two`"):
        run.inpaint("held-out:two", "half")
    with pytest.raises(ValueError, match="^x: held-out needs a run trained on images"):
        scoregen.Run.load(runs["vp"]).inpaint("held-out:1", "half")
    r = run_cli(cli, "inpaint", "--run", digits_run, "--input", "held-out:two", "--mask", "half")
    assert "--input: held-out:N needs a count, found `two`" in r.stderr, r.stderr
