"""docs/python.md runs as written: its ```python blocks, in order, as one
script, from the repository root (output into a temporary folder)."""

import os
import re
import subprocess
import sys

from conftest import ROOT


def test_docs_python_md_runs(tmp_path):
    text = (ROOT / "docs" / "python.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 5
    script = tmp_path / "walkthrough.py"
    script.write_text("\n".join(blocks))
    env = dict(os.environ, SCOREGEN_WALKTHROUGH_OUT=str(tmp_path / "run"))
    r = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "modes covered" in r.stdout
    # the image part: both samplers measured, the inpainting done
    assert r.stdout.count("Fréchet distance") == 2 and "inpainted (4, 1, 8, 8)" in r.stdout
    assert (tmp_path / "run-digits" / "summary.html").read_text().count("data:image/png;base64,") == 1
