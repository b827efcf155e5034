"""What the PyTorch twins (benches/*_torch.py) share: the fixed input `cxr-triage bench` uses
and the timing loop. Benchmark only: never needed by the app, its tests or CI."""

import statistics
import time

import torch


def fixed_input(m):
    """A ramp from 0 to 1 over the plane, row-major, normalised as the manifest says: the
    input `cxr-triage bench` prints the probabilities of (equal numbers, equal networks)."""
    size, channels = m["input"]["size"], m["input"]["channels"]
    ramp = torch.linspace(0, 1, size * size).reshape(1, 1, size, size).repeat(1, channels, 1, 1)
    return (ramp - m["input"]["mean"][0]) / m["input"]["std"][0]


def report(net, m, runs, to_probs):
    """Print the header, the fixed input's probabilities (`to_probs` of the network's output)
    and images/s at batch 1 and 8, each the median of `runs` after a warm-up."""
    size = m["input"]["size"]
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads, {size}x{size} input")
    x = fixed_input(m)
    with torch.inference_mode():
        probs = to_probs(net(x))
        print("fixed-input probabilities:", [round(v, 4) for v in probs[0].tolist()])
        for batch in (1, 8):
            xb = x.repeat(batch, 1, 1, 1)
            net(xb)
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                net(xb)
                times.append(time.perf_counter() - t)
            print(f"  batch {batch}: {batch / statistics.median(times):8.1f} images/s")
