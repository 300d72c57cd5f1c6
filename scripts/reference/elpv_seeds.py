"""The ELPV comparison over several pretraining seeds: one scripts/results-elpv output per seed, averaged.
  python scripts/reference/elpv_seeds.py FIGURE.png OUT_SEED0 OUT_SEED1 ...
Prints, per task, a table of the mean over the pretraining seeds of each row's accuracy (itself a mean over the
probe's label draws) at 1, 2, 5, 10 labels per class and all labels (balanced accuracy in brackets), and the
in-domain minus transfer difference of each seed; draws the means with the seeds' spread (min to max) like the
paper's Figure 12.
Random init and raw pixels do not depend on the pretraining seed (they are the same in every OUT).
"""
import json, os, sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

png, outs = sys.argv[1], sys.argv[2:]
shots = ["1", "2", "5", "10", "all"]
labels = {"in-domain": "(1) in-domain", "transfer": "(2) transfer", "random init": "(3) random init",
          "raw pixels": "(4) raw pixels"}


def accuracies(out, data):
    """{row: [top-1 % per shot]} of one pretraining seed's output, and {row: balanced % with all labels}."""
    rows, balanced = {}, {}
    for part in ["in-domain", "transfer"]:
        with open(os.path.join(out, f"probe-{part}-{data}.json")) as f:
            for name, per_shot in json.load(f)["rows"].items():
                row = name if name in ("random init", "raw pixels") else part
                rows[row] = [100 * per_shot[s]["accuracy"] for s in shots]
                balanced[row] = 100 * per_shot["all"]["balanced_accuracy"]
    return rows, balanced


fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
for ax, (data, title) in zip(axes, [("elpv", "defect level (4 classes)"), ("elpv-binary", "defective vs functional")]):
    seeds, balanced = zip(*[accuracies(out, data) for out in outs])
    print(f"\n{title}, mean over {len(outs)} pretraining seeds (top-1 %)\n")
    print("| features | " + " | ".join(shots) + " |\n|---" + "|---" * len(shots) + "|")
    for row, label in labels.items():
        per_shot = list(zip(*[seed[row] for seed in seeds]))
        mean = [sum(v) / len(v) for v in per_shot]
        mean_balanced = sum(seed[row] for seed in balanced) / len(balanced)
        print(f"| {label} | " + " | ".join(f"{m:.1f}" for m in mean) + f" ({mean_balanced:.1f}) |")
        # max(0, ·): rows equal in every seed (random init, pixels) would give rounding-size negatives.
        spread = [[max(0.0, m - min(v)) for m, v in zip(mean, per_shot)], [max(0.0, max(v) - m) for m, v in zip(mean, per_shot)]]
        ax.errorbar(range(len(shots)), mean, yerr=spread, marker="o", capsize=3, label=label)
    for i, seed in enumerate(seeds):
        difference = [a - b for a, b in zip(seed["in-domain"], seed["transfer"])]
        print(f"| in-domain − transfer, {os.path.basename(outs[i].rstrip('/'))} | "
              + " | ".join(f"{d:+.1f}" for d in difference) + " |")
    ax.set_xticks(range(len(shots)), shots)
    ax.set_xlabel("labeled cells per class")
    ax.set_ylabel(f"top-1 accuracy (%), mean of {len(outs)} pretraining seeds")
    ax.set_title(f"ELPV: {title}")
    ax.grid(alpha=0.3)
axes[0].legend(fontsize=8)
fig.tight_layout()
fig.savefig(png, dpi=120)
print("\nwrote", png)
