"""Checks that lejepa backbones and timm models are the same network, in both directions.

  verify: timm.create_model(NAME, num_classes=0) loads lejepa's safetensors with strict=True and,
          on the same input, gives the same features as lejepa computed (max abs diff <= --tol).
  export: a freshly initialised timm model writes its safetensors, an input and its features, for
          lejepa to load and compare.

  .venv/bin/python scripts/reference/timm_check.py verify --name vit_small_patch16_224 --img-size 224 \
      --in-chans 3 --dir DIR      # DIR holds weights.safetensors, input.npy, features.npy
Prints one JSON line; exits 1 when the features differ by more than --tol.
"""
import argparse, json, os, sys
import numpy as np
import torch, timm
from safetensors.torch import load_file, save_file

p = argparse.ArgumentParser()
p.add_argument("mode", choices=["verify", "export"])
p.add_argument("--name", required=True)
p.add_argument("--img-size", type=int, default=224)
p.add_argument("--in-chans", type=int, default=3)
p.add_argument("--dir", required=True)
p.add_argument("--batch", type=int, default=2)
p.add_argument("--input-size", type=int, default=None, help="feed images of another size (ViT: dynamic_img_size)")
p.add_argument("--tol", type=float, default=1e-4)
a = p.parse_args()

kwargs = dict(num_classes=0, in_chans=a.in_chans)
if a.name.startswith("vit"):
    kwargs.update(img_size=a.img_size, dynamic_img_size=True)
torch.manual_seed(0)
model = timm.create_model(a.name, **kwargs).eval()
weights, inputs, features = (os.path.join(a.dir, f) for f in ("weights.safetensors", "input.npy", "features.npy"))

if a.mode == "export":
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, weights)
    size = a.input_size or a.img_size
    x = torch.randn(a.batch, a.in_chans, size, size)
    np.save(inputs, x.numpy())
    with torch.no_grad():
        np.save(features, model(x).numpy())
    print(json.dumps({"exported": a.name, "tensors": len(state)}))
    sys.exit(0)

model.load_state_dict(load_file(weights), strict=True)
x = torch.from_numpy(np.load(inputs))
with torch.no_grad():
    ours = torch.from_numpy(np.load(features))
    theirs = model(x)
diff = (ours - theirs).abs().max().item()
print(json.dumps({"name": a.name, "max_abs_diff": diff, "shape": list(theirs.shape)}))
sys.exit(0 if diff <= a.tol else 1)
