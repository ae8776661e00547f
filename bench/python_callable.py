"""The cost of a Python score in scoregen's samplers (issue #23): ms per step of
DPM-Solver++(2M) at a batch of 10,000 2-D points, the exact gmm8 score either
computed in Rust (the GaussianMixture passed as the score) or called back
through Python (a lambda around the same computation), so the difference is
the callback alone: taking the GIL, copying x and t into NumPy arrays and the
answer back. Run with the package installed (scripts/setup-python.sh):

    .venv/bin/python bench/python_callable.py [--n 10000] [--steps 50] [--reps 5]
"""

import argparse
import statistics
import time

import scoregen
from scoregen.oracle import GaussianMixture
from scoregen.sde import VE


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--sampler", default="dpmpp-2m")
    a = p.parse_args()
    mix, sde = GaussianMixture.named("gmm8"), VE(0.01, 10.0)
    calls = [0]

    def py_score(x, t):
        calls[0] += 1
        return mix.score(x, t, sde=sde)

    def noop(x, t):
        calls[0] += 1
        return x

    def per_step(score):
        times = []
        for r in range(a.reps + 1):
            calls[0] = 0
            t0 = time.perf_counter()
            scoregen.sample(score, sde, (a.n, 2), sampler=a.sampler, steps=a.steps, seed=r)
            if r:  # the first is a warm-up
                times.append((time.perf_counter() - t0) * 1e3 / a.steps)
        return statistics.median(times)

    rust = per_step(mix)
    py = per_step(py_score)
    nfe = calls[0]
    cheap = per_step(noop)
    print(f"{a.sampler}, {a.steps} steps, batch {a.n} × 2, median of {a.reps}")
    print(f"Rust score                         {rust:8.3f} ms/step")
    print(f"Python callable (same score)       {py:8.3f} ms/step  ({nfe} calls)")
    print(f"overhead of the Python path        {py - rust:8.3f} ms/step ({100 * (py - rust) / rust:.0f}%)")
    print(f"sampler + callback, identity score {cheap:8.3f} ms/step")


if __name__ == "__main__":
    main()
