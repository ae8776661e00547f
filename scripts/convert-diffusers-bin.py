#!/usr/bin/env python3
"""Converts a diffusers checkpoint's PyTorch-pickle weights to safetensors,
which is the only weight format scoregen reads (it never unpickles).

    python scripts/convert-diffusers-bin.py DIR [DIR ...]

DIR is a pipeline folder (its unet/ is converted) or a model folder holding
diffusion_pytorch_model.bin; diffusion_pytorch_model.safetensors is written
beside it, with the same tensor names, and the .bin is left in place.
Needs torch and safetensors (scripts/setup-python.sh installs both with CI set
or SCOREGEN_TORCH=1). The pickle is read with torch.load(weights_only=True),
so it cannot run code.
"""

import pathlib
import sys


def convert(folder: pathlib.Path) -> pathlib.Path:
    import torch
    from safetensors.torch import save_file

    model_dir = folder / "unet" if (folder / "unet").is_dir() else folder
    src = model_dir / "diffusion_pytorch_model.bin"
    if not src.is_file():
        raise SystemExit(f"{src}: not found (give a pipeline folder or a model folder holding it)")
    state = torch.load(src, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise SystemExit(f"{src}: not a state dict of tensors")
    dst = model_dir / "diffusion_pytorch_model.safetensors"
    # safetensors wants contiguous tensors that share no storage
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(dst))
    return dst


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    for arg in argv:
        print(f"{arg}: wrote {convert(pathlib.Path(arg))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
