"""FID and Inception Score parity with pytorch-fid (PyPI), random weights.

pytorch-fid's own network (`InceptionV3` over its `FIDInceptionA/C/E_1/E_2`
blocks) is built with seeded random weights instead of its download, saved
as a torch state dict, converted by `scripts/convert-inception.py`, and run by
scoregen on the same small image batches (two sizes, both resized to
299×299). Compared: the pool3 features and the 1,008 logits (≤ 1e-4
relative), FID from the features by pytorch-fid's `calculate_frechet_distance`
and the Inception Score by the original code's formula (≤ 1e-3 relative), and
the `eval --inception` path against a `--save-stats`-style `.npz`.

With CI set, missing torch / torchvision / pytorch-fid / scipy fail instead of
skipping (scripts/setup-python.sh installs them with CI or SCOREGEN_TORCH=1).
"""

import importlib.util
import subprocess
import sys
import time

import numpy as np
import pytest

import scoregen.metrics
from conftest import ROOT, require

MODULES = ("torch", "torchvision", "pytorch_fid", "scipy")


@pytest.fixture(scope="module")
def fid_net(tmp_path_factory):
    """pytorch-fid's InceptionV3 (pool3) with random weights, its Inception3,
    and the converted safetensors file."""
    missing = [m for m in MODULES if importlib.util.find_spec(m) is None]
    require(not missing, f"{', '.join(missing)} not installed (scripts/setup-python.sh installs them with CI set)")
    import torch
    from pytorch_fid import inception as pfi

    torch.manual_seed(0)
    torch.set_num_threads(2)

    def fid_inception_v3_random():
        # pytorch-fid's fid_inception_v3 without its download (load_state_dict_from_url)
        inc = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
        inc.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
        inc.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
        inc.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
        inc.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
        inc.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
        inc.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
        inc.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
        inc.Mixed_7b = pfi.FIDInceptionE_1(1280)
        inc.Mixed_7c = pfi.FIDInceptionE_2(2048)
        with torch.no_grad():
            for mod in inc.modules():
                if isinstance(mod, torch.nn.Conv2d):
                    torch.nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
                elif isinstance(mod, torch.nn.BatchNorm2d):
                    mod.weight.uniform_(0.5, 1.5)
                    mod.bias.normal_(0.0, 0.1)
                    mod.running_mean.normal_(0.0, 0.1)
                    mod.running_var.uniform_(0.5, 1.5)
            inc.fc.weight.normal_(0.0, 1.0)
            inc.fc.bias.normal_(0.0, 0.1)
        return inc

    built = {}

    def patched():
        built["inception"] = fid_inception_v3_random()
        return built["inception"]

    original = pfi.fid_inception_v3
    pfi.fid_inception_v3 = patched
    try:
        model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    finally:
        pfi.fid_inception_v3 = original
    inception = built["inception"].eval()
    # a random network maps every image near one feature vector: the fc rows
    # are made orthogonal to it, so the logits follow what differs between
    # images and the Inception Score is not ≈ 1 (which would test nothing)
    with torch.no_grad():
        m = model(torch.from_numpy(images(0, 8, 32, 32)))[0].flatten(1).mean(0)
        m = m / m.norm()
        inception.fc.weight -= (inception.fc.weight @ m)[:, None] * m[None, :]
    d = tmp_path_factory.mktemp("inception")
    pth, weights = d / "random.pth", d / "random.safetensors"
    torch.save(inception.state_dict(), pth)
    subprocess.run([sys.executable, str(ROOT / "scripts" / "convert-inception.py"), pth, weights], check=True)
    return torch, model, inception, weights


def images(seed, n, h, w):
    """Images in [0, 1]: smooth colour ramps with noise, different per image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    out = np.empty((n, 3, h, w), np.float32)
    for i in range(n):
        a = rng.uniform(-1, 1, size=(3, 3))
        ramp = a[:, 0, None, None] * yy + a[:, 1, None, None] * xx + a[:, 2, None, None]
        out[i] = np.clip(0.5 + 0.4 * ramp + 0.2 * rng.standard_normal((3, h, w)), 0, 1)
    return out


def reference_inception_score(logits, splits):
    """The original code's IS (openai/improved-gan inception_score.py) on the
    softmax of `logits`, log p from a log-softmax (as torch-fidelity) so that
    an underflowing probability gives 0·log 0 = 0, not NaN."""
    from scipy.special import log_softmax

    log_p = log_softmax(logits.astype(np.float64), axis=1)
    n, scores = log_p.shape[0], []
    for i in range(splits):
        lp = log_p[(i * n // splits) : ((i + 1) * n // splits), :]
        part = np.exp(lp)
        kl = part * (lp - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return np.mean(scores), np.std(scores)


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def test_features_fid_and_is_match_pytorch_fid(fid_net, tmp_path):
    torch, model, inception, weights = fid_net
    from pytorch_fid.fid_score import calculate_frechet_distance

    a, b = images(1, 20, 32, 32), images(2, 10, 21, 37)

    def theirs(x):
        with torch.no_grad():
            f = model(torch.from_numpy(x))[0].squeeze(3).squeeze(2)
            return f.numpy(), (f @ inception.fc.weight.T).numpy()  # torch-fidelity's logits_unbiased

    began = time.perf_counter()
    fa_t, la_t = theirs(a)
    fb_t, _ = theirs(b)
    torch_s = (time.perf_counter() - began) / 30
    began = time.perf_counter()
    fa, la = scoregen.metrics.inception_features(a, weights)
    fb, _ = scoregen.metrics.inception_features(b, weights)
    ours_s = (time.perf_counter() - began) / 30

    assert fa.shape == (20, 2048) and la.shape == (20, 1008)
    feat_err = max(rel(fa, fa_t), rel(fb, fb_t))
    logit_err = rel(la, la_t)
    assert feat_err <= 1e-4, feat_err
    assert logit_err <= 1e-4, logit_err

    # FID: pytorch-fid's statistics (np.mean of the float32 features, np.cov) and distance
    stats = lambda f: (np.mean(f, axis=0), np.cov(f, rowvar=False))  # noqa: E731
    fid_t = calculate_frechet_distance(*stats(fa_t), *stats(fb_t))
    fid = scoregen.metrics.fid(fa, fb)
    fid_err = abs(fid - fid_t) / abs(fid_t)
    assert fid_err <= 1e-3, (fid, fid_t)

    # IS: 10 splits of 2, the original formula on pytorch-fid's logits
    is_t, is_std_t = reference_inception_score(la_t, 10)
    is_m, is_std = scoregen.metrics.inception_score(la, 10)
    is_err = abs(is_m - is_t) / is_t
    assert is_t > 1.1, "the random logits must not be flat, or IS = 1 tests nothing"
    assert is_err <= 1e-3, (is_m, is_t)
    assert abs(is_std - is_std_t) <= 1e-3 * is_t

    # the whole `eval --inception` path against pytorch-fid's --save-stats file
    mu, sigma = stats(fb_t)
    npz = tmp_path / "ref.npz"
    np.savez_compressed(npz, mu=mu, sigma=sigma)
    report = scoregen.metrics.evaluate((2 * a - 1).reshape(20, -1), str(npz), inception=weights)
    fid_t_ab = calculate_frechet_distance(*stats(fa_t), mu, sigma)
    eval_err = abs(report["fid"] - fid_t_ab) / fid_t_ab
    assert eval_err <= 1e-3, (report["fid"], fid_t_ab)
    assert abs(report["inception_score"]["mean"] - is_t) <= 1e-3 * is_t

    print(
        "\nparity with pytorch-fid (random weights): max relative error "
        f"features {feat_err:.2e}, logits {logit_err:.2e}, FID {fid_err:.2e} (FID {fid_t:.6g}), "
        f"IS {is_err:.2e} (IS {is_t:.6g}), eval --inception FID {eval_err:.2e}; "
        f"seconds per image: scoregen {ours_s:.3f}, pytorch-fid {torch_s:.3f}"
    )


def test_bad_weight_file_is_refused_by_name(fid_net, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="bad.safetensors"):
        scoregen.metrics.inception_features(images(3, 1, 8, 8), bad)
