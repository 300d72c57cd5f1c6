"""The ELPV comparison as a figure like the paper's Figure 12: frozen linear-probe accuracy against
labels per class, one line per feature source, for the 4-level and the binary task.
  python scripts/reference/elpv_figure.py OUT   (reads OUT/probe-{in-domain,transfer}-{elpv,elpv-binary}.json)
"""
import json, os, sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

out = sys.argv[1]
shots = ["1", "2", "5", "10", "all"]
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
for ax, (data, title) in zip(axes, [("elpv", "defect level (4 classes)"), ("elpv-binary", "defective vs functional")]):
    rows = {}
    for part, label in [("in-domain", "(1) LeJEPA in-domain"), ("transfer", "(2) transfer: LeJEPA on Fashion-MNIST")]:
        with open(os.path.join(out, f"probe-{part}-{data}.json")) as f:
            report = json.load(f)["rows"]
        for name, per_shot in report.items():
            key = label if name not in ("random init", "raw pixels") else {"random init": "(3) random init", "raw pixels": "(4) raw pixels"}[name]
            rows[key] = per_shot
    for name in sorted(rows):
        mean = [100 * rows[name][s]["accuracy"] for s in shots]
        std = [100 * rows[name][s].get("accuracy_std", 0.0) for s in shots]
        ax.errorbar(range(len(shots)), mean, yerr=std, marker="o", capsize=3, label=name)
    ax.set_xticks(range(len(shots)), shots)
    ax.set_xlabel("labeled cells per class")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"ELPV: {title}")
    ax.grid(alpha=0.3)
axes[0].legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(out, "elpv-figure.png"), dpi=120)
print("wrote", os.path.join(out, "elpv-figure.png"))
