#!/usr/bin/env python3
"""Converts pytorch-fid's Inception-v3 weights to safetensors for scoregen.

`scoregen eval --inception FILE` (and `training.inception`) reads the network
of FID and the Inception Score from a safetensors file with the state-dict
names of torchvision's `Inception3` (`Conv2d_1a_3x3.conv.weight`, ...,
`fc.weight`, `fc.bias`). This script writes that file from

- pytorch-fid's published weights, `pt_inception-2015-12-05-6726825d.pth`
  (downloaded from pytorch-fid's release page when no input is given; needs
  internet), or
- any PyTorch state dict of the same network (a `.pth`/`.pt` file; a
  `{"state_dict": ...}` wrapper and `module.` prefixes are unwrapped).

Tensors are written as float32, in C order; BatchNorm's `num_batches_tracked`
counters are dropped (inference does not use them). Needs torch (and numpy);
the safetensors format is written here, so the `safetensors` package is not
needed.

    scripts/convert-inception.py pt_inception-2015-12-05-6726825d.pth inception.safetensors
    scripts/convert-inception.py --download inception.safetensors
"""

import argparse
import json
import struct
import sys

FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)


def load_state_dict(path):
    import torch

    if path is None:
        from torch.hub import load_state_dict_from_url

        return load_state_dict_from_url(FID_WEIGHTS_URL, progress=True, map_location="cpu")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return sd


def to_arrays(sd):
    """name -> float32 C-order numpy array, wrappers unwrapped, counters dropped."""
    import numpy as np

    out = {}
    for name, t in sd.items():
        if name.startswith("module."):
            name = name[len("module.") :]
        if name.endswith("num_batches_tracked"):
            continue
        if not hasattr(t, "detach") or not t.is_floating_point():
            raise SystemExit(f"convert-inception: `{name}` is not a float tensor")
        out[name] = np.ascontiguousarray(t.detach().to("cpu").float().numpy(), dtype="<f4")
    return out


def save_safetensors(arrays, path):
    """The safetensors layout: u64 header length, JSON header, raw data."""
    header, offset, blobs = {}, 0, []
    for name in sorted(arrays):
        a = arrays[name]
        data = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input", nargs="?", help="a torch state dict (.pth); omit with --download")
    p.add_argument("output", help="the safetensors file to write")
    p.add_argument("--download", action="store_true", help="fetch pytorch-fid's published weights")
    args = p.parse_args(argv)
    if (args.input is None) != args.download:
        p.error("give an input .pth, or --download (not both)")
    arrays = to_arrays(load_state_dict(args.input))
    save_safetensors(arrays, args.output)
    n = sum(a.size for a in arrays.values())
    print(f"convert-inception: {len(arrays)} tensors, {n:,} parameters -> {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
