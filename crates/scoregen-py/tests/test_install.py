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
    lend = tmp_path / "numpy-only"
    lend.mkdir()
    np_dir = pathlib.Path(np.__file__).parent
    for name in (np_dir.name, np_dir.name + ".libs"):
        if (np_dir.parent / name).exists():
            os.symlink(np_dir.parent / name, lend / name)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "lend-numpy.pth").write_text(str(lend) + "\n")
    r = subprocess.run([str(py), "-c", SCRIPT], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok ")
    size = wheel.stat().st_size / 2**20
    print(f"\nwheel {wheel.name}: {size:.1f} MiB, pip install into a fresh venv {seconds:.1f} s")
