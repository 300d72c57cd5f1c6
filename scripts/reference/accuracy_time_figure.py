"""The accuracy-against-time figure of RESULTS.md from results/fashion-mnist-accuracy-time.json (the points of
the two lejepa runs and the reference).  python scripts/reference/accuracy_time_figure.py JSON PNG"""
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
d = json.load(open(sys.argv[1]))
fig, ax = plt.subplots(figsize=(7.5, 4.4))
for label, pts, style in [("lejepa (after the allocator fix)", d["fixed"], "o-"), ("lejepa (first run, with the allocator bug)", d["first"], "o--"),
                          ("PyTorch reference", d["reference"], "s-")]:
    if pts:
        ax.plot([t for t, _ in pts], [a for _, a in pts], style, label=label)
for (name, a), color in zip(d["baselines"].items(), ["gray", "silver"]):
    ax.axhline(a, linestyle=":", color=color, label=name)
ax.set_xlabel("training wall-clock (minutes, 2 cores)")
ax.set_ylabel("frozen linear probe top-1 (%)")
ax.set_title("Fashion-MNIST, cpu-small recipe with a 2-epoch schedule")
ax.grid(alpha=0.3)
ax.legend(fontsize=8, loc="lower right")
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=120)
