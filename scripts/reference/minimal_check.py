"""Checks that lejepa's encoder with an embedding layer is MINIMAL.md's model: a timm backbone created
with num_classes=EMB (its `head` is the embedding layer) followed by torchvision.ops.MLP(EMB, PROJECTOR,
norm_layer=BatchNorm1d), as MINIMAL.md's ViTEncoder builds them.

DIR holds checkpoint.safetensors (lejepa's tensors: backbone.*, projector.embedding.*, projector.N.*),
input.npy, and lejepa's outputs embedding.npy (after the embedding layer) and z.npy (after the projector).
The tensors are renamed as MINIMAL.md's module names them (backbone.head.* for the embedding layer,
proj.* for the MLP), loaded with strict=True, and the module runs in eval mode on the same input.

  .venv/bin/python scripts/reference/minimal_check.py --name vit_small_patch8_224 --img-size 32 \
      --in-chans 1 --embedding-dim 32 --projector 64,64,16 --dir DIR
Prints one JSON line; exits 1 when either output differs by more than --tol times its largest value.
"""
import argparse, json, os, sys
import numpy as np
import torch, timm
from torch import nn
from torchvision.ops import MLP
from safetensors.torch import load_file

p = argparse.ArgumentParser()
p.add_argument("--name", required=True)
p.add_argument("--img-size", type=int, required=True)
p.add_argument("--in-chans", type=int, required=True)
p.add_argument("--embedding-dim", type=int, required=True)
p.add_argument("--projector", required=True)
p.add_argument("--dir", required=True)
p.add_argument("--tol", type=float, default=1e-4)
a = p.parse_args()


class ViTEncoder(nn.Module):  # MINIMAL.md's, with its sizes as arguments
    def __init__(self, proj_dims):
        super().__init__()
        self.backbone = timm.create_model(a.name, pretrained=False, num_classes=a.embedding_dim,
                                          img_size=a.img_size, in_chans=a.in_chans)
        self.proj = MLP(a.embedding_dim, proj_dims, norm_layer=nn.BatchNorm1d)

    def forward(self, x):
        emb = self.backbone(x)
        return emb, self.proj(emb)


model = ViTEncoder([int(d) for d in a.projector.split(",")]).eval()
renamed = {}
for name, tensor in load_file(os.path.join(a.dir, "checkpoint.safetensors")).items():
    if name.startswith("projector.embedding."):
        renamed["backbone.head." + name[len("projector.embedding."):]] = tensor
    elif name.startswith("projector."):
        renamed["proj." + name[len("projector."):]] = tensor
    elif name.startswith("backbone."):
        renamed[name] = tensor
model.load_state_dict(renamed, strict=True)
x = torch.from_numpy(np.load(os.path.join(a.dir, "input.npy")))
with torch.no_grad():
    emb, z = model(x)
report = {}
ok = True
for label, theirs, file in (("embedding", emb, "embedding.npy"), ("z", z, "z.npy")):
    ours = torch.from_numpy(np.load(os.path.join(a.dir, file)))
    scale = max(theirs.abs().max().item(), 1.0)
    diff = (ours - theirs).abs().max().item()
    report[label] = {"max_abs_diff": diff, "largest": scale, "shape": list(theirs.shape)}
    ok &= diff <= a.tol * scale
print(json.dumps(report))
sys.exit(0 if ok else 1)
