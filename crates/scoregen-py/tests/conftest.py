"""Shared fixtures: the repository, the `scoregen` binary, one small trained run.

With CI set, a missing dependency (the binary, PyTorch) fails instead of
skipping, so a broken install shows (as the Rust tests do: tests/ci).
"""

import os
import pathlib
import subprocess

import pytest

import scoregen

ROOT = pathlib.Path(__file__).resolve().parents[3]
CI = bool(os.environ.get("CI"))


def require(ok: bool, why: str) -> None:
    """Skip with `why` when `ok` is false, or fail when CI is set."""
    if not ok:
        if CI:
            pytest.fail(f"{why} (CI is set, so this fails instead of skipping)")
        pytest.skip(why)


@pytest.fixture(scope="session")
def cli() -> pathlib.Path:
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    exe = pathlib.Path(os.environ.get("SCOREGEN_BIN", target / "release" / "scoregen"))
    require(exe.exists(), f"the scoregen binary {exe} is missing: run `cargo build --release` first")
    return exe


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> pathlib.Path:
    """gmm8-ve trained for 300 steps (about 2 s): enough for a model whose
    samples and likelihoods are worth comparing, not for quality."""
    out = tmp_path_factory.mktemp("runs") / "gmm8-ve"
    scoregen.train(
        ROOT / "configs" / "gmm8-ve.toml",
        out=out,
        overrides={"training.steps": 300, "training.checkpoint_every": 300},
    )
    return out


def run_cli(cli, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(cli), "--quiet", *map(str, args)], capture_output=True, text=True, check=False)
