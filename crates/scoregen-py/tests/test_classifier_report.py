"""`scoregen.train_classifier` and `Run.report()` against the command line's
`scoregen train-classifier` and `scoregen report`: one app function each, so
the same arguments give the same files and outcome, and a refusal the same
message with the flag's name as the keyword."""

import json
import shutil

import pytest

import scoregen
from conftest import run_cli


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("noisy", [False, True])
def test_train_classifier_writes_the_cli_classifier(cli, trained_run, tmp_path, noisy):
    # points (gmm8: its components are the classes), a small MLP, few steps: about a second
    args = dict(steps=40, width=16, batch_size=32, lr=3e-3, seed=2)
    src = ["--run", trained_run, "--noisy"] if noisy else ["--data", "gmm8"]
    r = run_cli(cli, "--json", "train-classifier", *src, "--out", tmp_path / "cli", "--steps", 40, "--width", 16,
                "--batch-size", 32, "--lr", 3e-3, "--seed", 2)
    assert r.returncode == 0, r.stderr
    want = json.loads(r.stdout)
    src = dict(run=trained_run, noisy=True) if noisy else dict(data="gmm8")
    got = scoregen.train_classifier(**src, out=tmp_path / "py", progress_bar=False, **args)
    assert set(got) == set(want) == {"dir", "meta", "train_images", "test_images", "final_loss", "seconds"}
    for k in ("meta", "train_images", "test_images", "final_loss"):
        assert got[k] == want[k], k
    assert got["meta"]["sde"] == ("ve" if noisy else None) and got["meta"]["steps"] == 40
    assert _files(tmp_path / "py") == _files(tmp_path / "cli")
    # a keyword is not ignored
    other = scoregen.train_classifier(**src, out=tmp_path / "py2", progress_bar=False, **{**args, "seed": 3})
    assert other["final_loss"] != got["final_loss"]


def test_train_classifier_default_out_is_the_cli_one(trained_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    got = scoregen.train_classifier(run=trained_run, noisy=True, steps=2, width=4, progress_bar=False)
    assert got["dir"] == str(trained_run / "classifier-noisy")
    got = scoregen.train_classifier(data="gmm8", steps=2, width=4, progress_bar=False)
    assert got["dir"] == "classifiers/gmm8" and (tmp_path / "classifiers" / "gmm8").is_dir()


# (flags, keywords, the refused setting): each front end names it by its own spelling
BAD = [
    ([], {}, "data"),
    (["--data", "gmm8", "--noisy"], dict(data="gmm8", noisy=True), "noisy"),
    (["--data", "gmm8", "--steps", 0], dict(data="gmm8", steps=0), "steps"),
    (["--data", "gmm8", "--batch-size", 0], dict(data="gmm8", batch_size=0), "batch_size"),
    (["--data", "gmm8", "--width", 0], dict(data="gmm8", width=0), "width"),
    (["--data", "gmm8", "--lr", 0], dict(data="gmm8", lr=0.0), "lr"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_train_classifier_refusals_are_the_cli_messages(cli, tmp_path, case):
    flags, kwargs, key = BAD[case]
    r = run_cli(cli, "train-classifier", *flags, "--out", tmp_path / "c")
    assert r.returncode == 1
    with pytest.raises(ValueError) as e:
        scoregen.train_classifier(**kwargs, out=tmp_path / "c", progress_bar=False)
    keyword, _, message = str(e.value).partition(": ")
    assert keyword == key
    assert message and f"--{key.replace('_', '-')}: {message}" in r.stderr, (r.stderr, str(e.value))
    assert not (tmp_path / "c").exists()


def test_report_writes_the_cli_report(cli, trained_run, tmp_path):
    a, b = tmp_path / "cli", tmp_path / "py"
    for d in (a, b):
        shutil.copytree(trained_run, d)
        for old in ("report.html", "report"):
            shutil.rmtree(d / old, ignore_errors=True)
            (d / old).unlink(missing_ok=True) if (d / old).is_file() else None
    r = run_cli(cli, "--json", "report", "--run", a)
    assert r.returncode == 0, r.stderr
    want = json.loads(r.stdout)
    got = scoregen.Run.load(b).report()
    assert set(got) == set(want) == {"html", "figures", "skipped", "seconds"}
    assert got["html"] == str(b / "report.html") and (b / "report.html").is_file()
    rel = lambda r, root: [str(pathlib_rel(f, root)) for f in r["figures"]]
    assert rel(got, b) == rel(want, a) and len(got["figures"]) >= 4
    assert got["skipped"] == want["skipped"]
    # the same figures, byte for byte, and the same page
    assert _files(b / "report") == _files(a / "report")
    assert (b / "report.html").read_text() == (a / "report.html").read_text()


def pathlib_rel(f, root):
    import pathlib

    return pathlib.Path(f).relative_to(root)

