"""Peak memory of the transformers backend's KV cache: copies that free each old layer as they go,
against copying the whole cache before the old one is dropped.

While decoding, rows that finish leave the batch: the cache of the rows that remain is copied into a
new one (without the padding they no longer need), and queued rows join it the same way. Copied
whole, the old cache, the gathered rows and their growth buffer are held at once (about 2.5x the cache
when rows finish at different steps); odiag copies one layer at a time and frees each old layer once
it is copied. Each run samples twice as many completions as the batch holds, so rows both leave and
join, from a random Qwen3 (8 layers, 4 KV heads of 512) in
a process of its own and prints its peak resident memory above the loaded model, as a multiple of the
KV cache the plan counts (rows x positions x layers x 2 x KV heads x head dim x bytes), and whether the
two runs drew the same tokens.

    python bench/kv_memory.py            # 64 rows of up to 224 positions: a 1.75 GiB cache
    python bench/kv_memory.py --quick    # 32 rows of up to 224 positions: 0.88 GiB
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import hashlib, json, sys
import numpy as np, torch
from transformers import Qwen3Config, Qwen3ForCausalLM
from harness.backends import ModelSpec, SampleRequest
from harness.backends import hf
rows, new, whole = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
if whole:  # the whole cache gathered or stacked, then grown, while the old one is still held
    def left_pad(kv_groups, masks, consumed=None):
        if consumed is not None:
            kv_groups = [[(layer.keys, layer.values) for layer in consumed.layers], *kv_groups]
        length = max(m.shape[1] for m in masks)
        layers = []
        for per_group in zip(*kv_groups, strict=True):
            k, v = (torch.cat([torch.nn.functional.pad(x[n], (0, 0, length - x[n].shape[2], 0)) for x in per_group])
                    for n in (0, 1))
            layers.append((k, v))
        mask = torch.cat([torch.nn.functional.pad(m, (length - m.shape[1], 0)) for m in masks])
        spare = hf._GrowingLayer._spare
        return hf.Cache(layers=[hf._GrowingLayer(spare(k), spare(v), k.shape[2]) for k, v in layers]), mask
    hf._left_pad = left_pad

    def select(self, keep):
        idx = torch.as_tensor(keep)
        mask = self.mask_BL[idx]
        lead = int((mask.cumsum(dim=1) == 0).sum(dim=1).min())
        gathered = [(layer.keys[idx, :, lead:], layer.values[idx, :, lead:]) for layer in self.cache.layers]
        layers = [hf._GrowingLayer(hf._GrowingLayer._spare(k), hf._GrowingLayer._spare(v), k.shape[2]) for k, v in gathered]
        return hf._Running(self.request_B[keep], self.index_B[keep], [self.tokens[r] for r in keep],
                           hf.Cache(layers=layers), mask[:, lead:], self.position_B[idx], self.logits_BV[idx])
    hf._Running.select = select
torch.manual_seed(0)
torch.set_num_threads(2)
layers, kv_heads, head_dim, prefix = 8, 4, 512, 24
cfg = Qwen3Config(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                  num_key_value_heads=kv_heads, head_dim=head_dim, max_position_embeddings=4096, tie_word_embeddings=True)
backend = hf.HFBackend.from_model(Qwen3ForCausalLM(cfg).eval(), ModelSpec("random"), device="cpu", batch_size=rows)
# twice as many completions as rows, each stopping at its own step: rows leave the batch one or two at a time,
# and queued ones join it as a quarter of it frees
requests = [SampleRequest(np.arange(1, prefix + 1), 1, seed=j, max_new_tokens=new - j % 32) for j in range(2 * rows)]
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak
base = status("VmRSS")
results = backend.sample(requests)
digest = hashlib.sha256(b"".join(t.tobytes() for r in results for t in r.tokens)).hexdigest()
cache = rows * (prefix + new) * layers * 2 * kv_heads * head_dim * 4
print(json.dumps({"peak": status("VmHWM") - base, "cache": cache, "tokens": digest}))
"""


def measure(rows: int, new: int, whole: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(rows), str(new), "1" if whole else "0"],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="32 rows of up to 224 positions")
    args = parser.parse_args()
    rows, new = (32, 200) if args.quick else (64, 200)
    by_layer, whole = measure(rows, new, False), measure(rows, new, True)
    gib = 2.0**30
    print(f"{rows} rows of up to {24 + new} positions: KV cache {by_layer['cache'] / gib:.2f} GiB")
    for name, r in (("layer by layer (odiag)", by_layer), ("whole cache (baseline)", whole)):
        print(f"  {name:<24} peak {r['peak'] / gib:.2f} GiB = {r['peak'] / r['cache']:.2f}x the cache")
    print(f"peak ratio (whole / layer by layer): {whole['peak'] / by_layer['peak']:.2f}x; "
          f"same tokens: {'yes' if whole['tokens'] == by_layer['tokens'] else 'NO'}")
    return 0 if whole["tokens"] == by_layer["tokens"] else 1


if __name__ == "__main__":
    sys.exit(main())
