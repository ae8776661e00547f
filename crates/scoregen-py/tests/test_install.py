"""The wheel scripts/setup-python.sh builds (target/wheels/scoregen-*.whl)
installs with pip into a fresh venv with no Rust on PATH, imports from there
and samples: what a user gets from `pip install scoregen-….whl`.

The fresh venv gets no packages from the network: the wheel is installed
with --no-deps, and NumPy (its one dependency) is lent from this interpreter
through a folder holding only a link to it, so the test runs offline and in
a few seconds (no second maturin build).
"""

import os
import pathlib
import subprocess
import sys
import time

import numpy as np

from conftest import ROOT, require

SCRIPT = """
import pathlib, sys
import numpy as np
import scoregen
where = pathlib.Path(scoregen.__file__).resolve()
assert where.is_relative_to(pathlib.Path(sys.prefix).resolve()), where
x = scoregen.sample(scoregen.oracle.GaussianMixture.named("gmm8"), scoregen.sde.VP(), (500, 2), steps=30, seed=0)
assert x.shape == (500, 2) and np.isfinite(x).all()
print("ok", where)
"""


def test_the_wheel_installs_into_a_fresh_venv_without_rust(tmp_path):
    wheels = sorted((ROOT / "target" / "wheels").glob("scoregen-*.whl"))
    require(bool(wheels), "no wheel in target/wheels: run scripts/setup-python.sh first")
    wheel = wheels[-1]
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # no cargo, rustc or maturin: only the system's own folders and the venv's
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "PIP_NO_INDEX": "1"}
    start = time.perf_counter()
    r = subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)], env=env,
                       capture_output=True, text=True)
    seconds = time.perf_counter() - start
    assert r.returncode == 0, r.stdout + r.stderr
    # NumPy lent from this interpreter, alone in a folder the fresh venv reads through a .pth file
    _lend(venv, tmp_path / "numpy-only", np)
    r = subprocess.run([str(py), "-c", SCRIPT], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok ")
    size = wheel.stat().st_size / 2**20
    print(f"\nwheel {wheel.name}: {size:.1f} MiB, pip install into a fresh venv {seconds:.1f} s")


def _lend(venv: pathlib.Path, folder: pathlib.Path, *modules) -> None:
    """`modules` (imported here) readable from the fresh `venv` through a
    .pth file naming `folder`, which holds only links to them."""
    folder.mkdir()
    for m in modules:
        d = pathlib.Path(m.__file__).parent
        for name in (d.name, d.name + ".libs"):
            if (d.parent / name).exists():
                os.symlink(d.parent / name, folder / name)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "lend.pth").write_text(str(folder) + "\n")


def test_pip_install_of_the_source_path_into_a_fresh_venv_with_rust(tmp_path):
    """`pip install crates/scoregen-py` (maturin as the PEP 517 backend, the
    one pyproject.toml names) into a fresh venv with cargo on PATH, then
    import and sample from there. Offline: maturin and NumPy are lent from
    this interpreter and pip builds without isolation (with it, pip would
    fetch maturin from PyPI into a throwaway environment; the build is the
    same). CARGO_TARGET_DIR is the repository's target/, so cargo reuses the
    library's release artifacts and recompiles only what depends on the
    interpreter (pyo3 and this crate)."""
    import shutil

    cargo = shutil.which("cargo")
    require(cargo is not None, "cargo is not on PATH: pip install of the source needs the Rust toolchain")
    try:
        import maturin
    except ImportError:
        maturin = None
    maturin_exe = shutil.which("maturin") or str(pathlib.Path(sys.executable).parent / "maturin")
    require(maturin is not None and pathlib.Path(maturin_exe).exists(),
            "maturin is not installed here (scripts/setup-python.sh installs it)")
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    _lend(venv, tmp_path / "lent", np, maturin)
    os.symlink(maturin_exe, venv / "bin" / "maturin")
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    env = {
        "PATH": f"{venv / 'bin'}:{pathlib.Path(cargo).parent}:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "PIP_NO_INDEX": "1",
        "CARGO_TARGET_DIR": target,
    }
    for k in ("RUSTUP_HOME", "CARGO_HOME"):
        if k in os.environ:
            env[k] = os.environ[k]
    # maturin leaves a copy of the wheel it builds in TARGET/wheels, where the
    # wheel test above looks for setup-python.sh's: removed after
    wheels = pathlib.Path(target) / "wheels"
    before = set(wheels.glob("*.whl"))
    start = time.perf_counter()
    try:
        r = subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                            str(ROOT / "crates" / "scoregen-py")], env=env, capture_output=True, text=True,
                           cwd=tmp_path)
    finally:
        for w in set(wheels.glob("*.whl")) - before:
            w.unlink()
    seconds = time.perf_counter() - start
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([str(py), "-c", SCRIPT], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok ")
    print(f"\npip install crates/scoregen-py into a fresh venv: {seconds:.1f} s (target {target})")
