"""PyTorch twin of cxrnet, for the candle-vs-PyTorch inference speed comparison.

Benchmark only: torch is never needed by the app, its tests or CI. Install it beside the
project (e.g. `python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch safetensors`),
then, on the same machine and right after `cxr-triage bench`:

    /tmp/torchenv/bin/python benches/cxrnet_torch.py models/cxrnet-v1.json

It loads the same safetensors weights (the key names are shared), checks that every tensor is
used, and prints images/s at batch 1 and 8 (median of 15 runs, after a warm-up), plus the
softmax of a fixed input so the twin can be compared with `cxr-triage`.
"""

import json
import sys
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from twin_common import report  # noqa: E402


class ConvBn(nn.Module):
    def __init__(self, cin, cout, k, stride):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5)

    def forward(self, x):
        return self.bn(self.conv(x))


class Block(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.a = ConvBn(cin, cout, 3, 2)
        self.b = ConvBn(cout, cout, 3, 1)
        self.down = ConvBn(cin, cout, 1, 2)

    def forward(self, x):
        y = torch.relu(self.a(x))
        return torch.relu(self.b(y) + self.down(x))


class CxrNet(nn.Module):
    def __init__(self, widths, channels, labels):
        super().__init__()
        self.stem = ConvBn(channels, widths[0], 5, 2)
        self.blocks = nn.ModuleList(Block(a, b) for a, b in zip(widths, widths[1:]))
        self.head = nn.Linear(widths[-1], labels)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean((2, 3)))


def main():
    manifest_path = Path(sys.argv[1] if len(sys.argv) > 1 else "models/cxrnet-v1.json")
    m = json.loads(manifest_path.read_text())
    widths = (m.get("cxrnet") or {}).get("widths", [24, 32, 64, 128, 192])
    net = CxrNet(widths, m["input"]["channels"], len(m["labels"])).eval()
    state = load_file(str(manifest_path.parent / m["weights"]))
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    assert not missing and not unexpected, (missing, unexpected)
    temperature = m.get("temperature", 1.0)
    report(net, m, 15, lambda y: torch.softmax(y / temperature, dim=1))


if __name__ == "__main__":
    main()
