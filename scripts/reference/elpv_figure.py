"""The ELPV comparison as a figure like the paper's Figure 12, and its table: frozen linear-probe accuracy against
labels per class, one line per feature source, for the 4-level and the binary task.
  python scripts/reference/elpv_figure.py FIGURE.png OUT [OUT ...]
Each OUT is one scripts/results-elpv output (one pretraining seed: OUT/probe-{in-domain,transfer}-{elpv,elpv-binary}.json).
Prints, per task, the mean over the OUTs of each row's accuracy (itself a mean over the probe's label draws) at 1, 2, 5,
10 labels per class and all labels (balanced accuracy in brackets), and the in-domain minus transfer difference of
each OUT. Error bars: with one OUT, the spread (std) over the probe's label draws; with several, the pretraining
seeds' spread (min to max). Random init and raw pixels do not depend on the pretraining seed.
"""
import json, os, sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

png, outs = sys.argv[1], sys.argv[2:]
shots = ["1", "2", "5", "10", "all"]
labels = {"in-domain": "(1) in-domain", "transfer": "(2) transfer: LeJEPA on Fashion-MNIST",
          "random init": "(3) random init", "raw pixels": "(4) raw pixels"}


def accuracies(out, data):
    """One OUT's rows: {row: [top-1 % per shot]}, {row: [std over label draws, % per shot]}, {row: balanced % with all labels}."""
    rows, draws_std, balanced = {}, {}, {}
    for part in ["in-domain", "transfer"]:
        with open(os.path.join(out, f"probe-{part}-{data}.json")) as f:
            for name, per_shot in json.load(f)["rows"].items():
                row = name if name in ("random init", "raw pixels") else part
                rows[row] = [100 * per_shot[s]["accuracy"] for s in shots]
                draws_std[row] = [100 * per_shot[s].get("accuracy_std", 0.0) for s in shots]
                balanced[row] = 100 * per_shot["all"]["balanced_accuracy"]
    return rows, draws_std, balanced


fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
for ax, (data, title) in zip(axes, [("elpv", "defect level (4 classes)"), ("elpv-binary", "defective vs functional")]):
    seeds, draws_std, balanced = zip(*[accuracies(out, data) for out in outs])
    print(f"\n{title}, mean over {len(outs)} pretraining seed(s) (top-1 %)\n")
    print("| features | " + " | ".join(shots) + " |\n|---" + "|---" * len(shots) + "|")
    for row, label in labels.items():
        per_shot = list(zip(*[seed[row] for seed in seeds]))
        mean = [sum(v) / len(v) for v in per_shot]
        mean_balanced = sum(seed[row] for seed in balanced) / len(balanced)
        print(f"| {label} | " + " | ".join(f"{m:.1f}" for m in mean) + f" ({mean_balanced:.1f}) |")
        if len(outs) == 1:
            spread = draws_std[0][row]
        else:  # max(0, ·): rows equal in every seed (random init, pixels) would give rounding-size negatives.
            spread = [[max(0.0, m - min(v)) for m, v in zip(mean, per_shot)], [max(0.0, max(v) - m) for m, v in zip(mean, per_shot)]]
        ax.errorbar(range(len(shots)), mean, yerr=spread, marker="o", capsize=3, label=label)
    for i, seed in enumerate(seeds):
        difference = [a - b for a, b in zip(seed["in-domain"], seed["transfer"])]
        print(f"| in-domain − transfer, {os.path.basename(outs[i].rstrip('/'))} | "
              + " | ".join(f"{d:+.1f}" for d in difference) + " |")
    ax.set_xticks(range(len(shots)), shots)
    ax.set_xlabel("labeled cells per class")
    ax.set_ylabel("top-1 accuracy (%)" + (f", mean of {len(outs)} pretraining seeds" if len(outs) > 1 else ""))
    ax.set_title(f"ELPV: {title}")
    ax.grid(alpha=0.3)
axes[0].legend(fontsize=8)
fig.tight_layout()
fig.savefig(png, dpi=120)
print("\nwrote", png)
