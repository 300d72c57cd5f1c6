"""The selection study's summary and figure, from `lejepa select DIR --json` (its last line) and the runs' configs:
  python scripts/reference/selection_study.py SELECT.json SUMMARY.json FIGURE.png
SUMMARY.json: one record per run {"name", "lambda", "lr", "local_views", "weight_decay", "final_loss",
"probe_accuracy"}, plus select's ρ values with their bootstrap intervals and, for each fixed λ, ρ of the plain loss
over that λ's runs (where the loss compares runs best). FIGURE.png: the paper's Figure 1 as a scatter: probe
accuracy against the training loss (left) and against loss/λ^α at the α with the highest ρ (right), runs coloured by λ.
"""
import json, os, sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import tomllib
from scipy.stats import spearmanr

select_path, summary_path, figure_path = sys.argv[1:4]
select = json.load(open(select_path))
runs = []
for r in select["runs"]:
    if r["probe_accuracy"] is None:
        continue
    config = tomllib.load(open(os.path.join(r["run_dir"], "config.toml"), "rb"))
    runs.append({"name": os.path.basename(r["run_dir"].rstrip("/")), "lambda": r["lambda"], "lr": config["lr"],
                 "local_views": config["local_views"], "weight_decay": config["weight_decay"],
                 "final_loss": r["final_loss"], "probe_accuracy": r["probe_accuracy"]})
by_lambda = {}
for lam in sorted({r["lambda"] for r in runs}):
    group = [r for r in runs if r["lambda"] == lam]
    rho = spearmanr([-r["final_loss"] for r in group], [r["probe_accuracy"] for r in group]).statistic
    by_lambda[str(lam)] = {"runs": len(group), "spearman_plain": rho}
best = max(select["alpha_curve"], key=lambda point: point["spearman"])
summary = {"runs": runs, "spearman_plain": select["spearman_plain"], "alpha_curve": select["alpha_curve"],
           "best_alpha": best["alpha"], "accuracy_lost": select["accuracy_lost"], "comparable": select["comparable"],
           "spearman_plain_within_lambda": by_lambda}
json.dump(summary, open(summary_path, "w"), indent=1)

fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
colours = plt.get_cmap("viridis")
lambdas = sorted({r["lambda"] for r in runs})
for ax, alpha in zip(axes, [0.0, best["alpha"]]):
    for i, lam in enumerate(lambdas):
        group = [r for r in runs if r["lambda"] == lam]
        ax.scatter([r["final_loss"] / lam ** alpha for r in group], [100 * r["probe_accuracy"] for r in group],
                   color=colours(i / max(len(lambdas) - 1, 1)), label=f"λ = {lam}", s=36)
    point = next(p for p in select["alpha_curve"] if p["alpha"] == alpha)
    ax.set_xlabel("training loss" if alpha == 0 else f"training loss / λ^{alpha}")
    ax.set_title(f"ρ = {point['spearman']:.2f} [{point['low']:.2f}, {point['high']:.2f}] (95% bootstrap)")
    ax.grid(alpha=0.3)
axes[0].set_ylabel("frozen linear probe, top-1 %")
axes[0].legend()
fig.suptitle(f"{len(runs)} runs on a 10,000-image Fashion-MNIST subset: does the loss rank them without labels?")
fig.tight_layout()
fig.savefig(figure_path, dpi=120)
print(json.dumps({"runs": len(runs), "best_alpha": best["alpha"], "within_lambda": by_lambda}))
