"""Checks that lejepa backbones and timm models are the same network, in both directions.

  verify: timm.create_model(NAME, num_classes=0) loads lejepa's safetensors with strict=True and,
          on the same input, gives the same features and probe features as lejepa computed (max abs
          diff <= --tol times the largest feature, at least 1: the two programs may run their
          convolutions in other memory layouts, which sum in another order).
  export: a freshly initialised timm model writes its safetensors, an input, its features and probe
          features, for lejepa to load and compare.
  local-dir: timm.create_model("local-dir:DIR/model", pretrained=True) builds and loads a folder that
          `lejepa export` wrote (no --name needed) and gives the same features as lejepa computed; the
          JSON line adds the preprocessing timm resolves from the folder's config.json.
Probe features: the paper's, the last two blocks' outputs concatenated (a ViT's class tokens, a ResNet's
outputs average-pooled), taken from timm's blocks by forward hooks.

  .venv/bin/python scripts/reference/timm_check.py verify --name vit_small_patch16_224 --img-size 224 \
      --in-chans 3 --dir DIR      # DIR holds weights.safetensors, input.npy, features.npy
Prints one JSON line; exits 1 when the features differ by more than --tol.
"""
import argparse, json, os, sys
import numpy as np
import torch, timm
from safetensors.torch import load_file, save_file

p = argparse.ArgumentParser()
p.add_argument("mode", choices=["verify", "export", "local-dir"])
p.add_argument("--name", default="")
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
data_config = None
if a.mode == "local-dir":
    model = timm.create_model(f"local-dir:{os.path.join(a.dir, 'model')}", pretrained=True, num_classes=0).eval()
    data_config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in timm.data.resolve_data_config(model=model).items()}
    a.name = model.pretrained_cfg["architecture"]
else:
    model = timm.create_model(a.name, **kwargs).eval()
weights, inputs, features, probe_features = (os.path.join(a.dir, f) for f in ("weights.safetensors", "input.npy", "features.npy", "probe_features.npy"))

if a.name.startswith("vit"):
    blocks, pool = list(model.blocks), lambda out: out[:, 0]
else:
    blocks = [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]
    pool = lambda out: out.mean((2, 3))
last_two = []
for block in blocks[-2:]:
    block.register_forward_hook(lambda module, inputs, out: last_two.append(pool(out)))

if a.mode == "export":
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, weights)
    size = a.input_size or a.img_size
    x = torch.randn(a.batch, a.in_chans, size, size)
    np.save(inputs, x.numpy())
    with torch.no_grad():
        np.save(features, model(x).numpy())
    np.save(probe_features, torch.cat(last_two, 1).numpy())
    print(json.dumps({"exported": a.name, "tensors": len(state)}))
    sys.exit(0)

if a.mode == "verify":
    model.load_state_dict(load_file(weights), strict=True)
x = torch.from_numpy(np.load(inputs))
with torch.no_grad():
    ours = torch.from_numpy(np.load(features))
    theirs = model(x)
    ours_probe, theirs_probe = torch.from_numpy(np.load(probe_features)), torch.cat(last_two, 1)
diff = (ours - theirs).abs().max().item()
probe_diff = (ours_probe - theirs_probe).abs().max().item() if ours_probe.shape == theirs_probe.shape else float("inf")
scale = max(theirs.abs().max().item(), theirs_probe.abs().max().item(), 1.0)
print(json.dumps({"name": a.name, "max_abs_diff": diff, "shape": list(theirs.shape),
                  "probe_max_abs_diff": probe_diff, "probe_shape": list(theirs_probe.shape), "largest_feature": scale,
                  "data_config": data_config}))
sys.exit(0 if max(diff, probe_diff) <= a.tol * scale else 1)
