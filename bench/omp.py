"""OpenMP's wait policy: training steps alone and beside a busy process, spinning vs sleeping.

The stage scripts and commands set ``OMP_WAIT_POLICY=PASSIVE`` before importing torch. This
prints why: the median step time of ResNet18 (1 channel, ``last_stride`` 1, Adam) on one batch,
in a fresh process per setting, with the machine to itself and beside one busy-looping process.

    python bench/omp.py [--size 128] [--batch 32] [--steps 12]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STEPS = """
import statistics, sys, time
import torch, torch.nn.functional as F
from pneumo.model import build_network
size, batch, steps = map(int, sys.argv[1:4])
torch.manual_seed(0)
net = build_network("resnet18", last_stride=1, pretrained=False, weights_path=None)
opt = torch.optim.Adam(net.parameters(), 1e-3)
x, y = torch.randn(batch, 1, size, size), (torch.rand(batch) > 0.7).float()
times = []
for _ in range(steps):
    t = time.perf_counter()
    loss = F.binary_cross_entropy_with_logits(net(x).squeeze(1), y)
    opt.zero_grad(); loss.backward(); opt.step()
    times.append(time.perf_counter() - t)
print(batch / statistics.median(times[2:]))
"""


def rate(policy: str | None, size: int, batch: int, steps: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    args = [sys.executable, "-c", STEPS, str(size), str(batch), str(steps)]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.strip())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=12)
    a = p.parse_args()
    print(f"ResNet18 training step, {a.size} px, batch {a.batch}, {os.cpu_count()} CPUs (img/s)")
    for label, busy in (("alone", False), ("beside a busy process", True)):
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            default = rate(None, a.size, a.batch, a.steps)
            passive = rate("PASSIVE", a.size, a.batch, a.steps)
        finally:
            if hog:
                hog.kill()
                hog.wait()
        print(f"  {label}: default {default:.1f}, PASSIVE {passive:.1f} ({passive / default:.2f}x)")


if __name__ == "__main__":
    main()
