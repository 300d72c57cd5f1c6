"""Checks that lejepa feeds foreign timm weights what timm's own evaluation pipeline feeds them.

  init:    timm.create_model(NAME, num_classes=0) with seed 0 (and random BatchNorm statistics) writes
           DIR/weights.safetensors.
  compare: the same model reads the images listed in DIR/emb.csv (paths relative to --images) through
           timm.data.resolve_data_config + create_transform (Pillow resize, centre crop, normalisation)
           and its features are compared with lejepa's DIR/emb.npy.

  .venv/bin/python scripts/reference/timm_transform_check.py compare --name resnet18 --dir DIR --images IMAGES
Prints one JSON line; exits 1 when the features differ by more than --tol times the largest feature (at least 1).
"""
import argparse, csv, json, os, sys
import numpy as np
import torch, timm
from PIL import Image
from safetensors.torch import load_file, save_file

p = argparse.ArgumentParser()
p.add_argument("mode", choices=["init", "compare"])
p.add_argument("--name", required=True)
p.add_argument("--dir", required=True)
p.add_argument("--images", default=None)
p.add_argument("--tol", type=float, default=1e-4)
a = p.parse_args()

torch.manual_seed(0)
model = timm.create_model(a.name, num_classes=0).eval()
weights = os.path.join(a.dir, "weights.safetensors")
if a.mode == "init":
    # Non-trivial BatchNorm statistics and gamma (timm zero-initialises each block's last gamma).
    with torch.no_grad():
        for n, t in model.state_dict().items():
            if n.endswith("running_var") or ("bn" in n and n.endswith("weight")):
                t.copy_(torch.rand_like(t) + 0.5)
            elif n.endswith("running_mean"):
                t.copy_(torch.randn_like(t) * 0.1)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    print(json.dumps({"init": a.name}))
    sys.exit(0)

model.load_state_dict(load_file(weights), strict=True)
config = timm.data.resolve_data_config(model=model)
transform = timm.data.create_transform(**config)
with open(os.path.join(a.dir, "emb.csv")) as f:
    rows = list(csv.DictReader(f))
batch = torch.stack([transform(Image.open(os.path.join(a.images, r["image"])).convert("RGB")) for r in rows])
with torch.no_grad():
    theirs = model(batch)
ours = torch.from_numpy(np.load(os.path.join(a.dir, "emb.npy")))
diff = (ours - theirs).abs().max().item() if ours.shape == theirs.shape else float("inf")
scale = max(theirs.abs().max().item(), 1.0)
print(json.dumps({"name": a.name, "images": len(rows), "max_abs_diff": diff, "largest_feature": scale,
                  "data_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()}}))
sys.exit(0 if diff <= a.tol * scale else 1)
