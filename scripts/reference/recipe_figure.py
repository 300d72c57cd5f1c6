"""The recipe study (scripts/results-recipe) as a table and a figure: per data set, the frozen linear probe on all
labels of the fitted default's encoder and of the paper recipe's, trained for the same time, next to each network at
random init and raw pixels (top-1 and balanced accuracy, %).
  python scripts/reference/recipe_figure.py OUT FIGURE.png
OUT is the study's folder (OUT/summary.json). Prints the Markdown table.
"""
import json, os, sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

out, png = sys.argv[1], sys.argv[2]
with open(os.path.join(out, "summary.json")) as f:
    studies = sorted(json.load(f), key=lambda s: s["data"] != "fashion-mnist")  # Fashion-MNIST first


def all_labels(report, row):
    """(top-1 %, balanced %) of one row of a probe report, on all labels."""
    scores = report["rows"][row]["all"]
    return 100 * scores["accuracy"], 100 * scores["balanced_accuracy"]


def backbone_row(report):
    return next(name for name in report["rows"] if name not in ("random init", "raw pixels"))


print("| data | fitted default | paper recipe | raw pixels | fitted default's network, random init | paper recipe's network, random init | training time (fitted / paper) |")
print("|---|---|---|---|---|---|---|")
fig, axes = plt.subplots(1, len(studies), figsize=(5.5 * len(studies), 4.2), squeeze=False)
for ax, study in zip(axes[0], studies):
    adapted, paper = study["adapted"], study["paper"]
    rows = {
        "fitted default": all_labels(adapted, backbone_row(adapted)),
        "paper recipe": all_labels(paper, backbone_row(paper)),
        "raw pixels": all_labels(adapted, "raw pixels"),
        "random init (fitted)": all_labels(adapted, "random init"),
        "random init (paper)": all_labels(paper, "random init"),
    }
    domain = study.get("adapted_domain")
    if domain:
        rows = {"fitted + domain switches": all_labels(domain, backbone_row(domain)), **rows}
    cells = [f"{rows[n][0]:.1f} ({rows[n][1]:.1f})" for n in ["fitted default", "paper recipe", "raw pixels", "random init (fitted)", "random init (paper)"]]
    minutes = f"{study['adapted_train_seconds'] / 60:.1f} / {study['paper_train_seconds'] / 60:.1f} min"
    print(f"| {study['data']} | " + " | ".join(cells) + f" | {minutes} |")
    if domain:
        switched, random = rows["fitted + domain switches"], all_labels(domain, "random init")
        print(f"| {study['data']}, fitted default with the domain switches | {switched[0]:.1f} ({switched[1]:.1f}) | | | {random[0]:.1f} ({random[1]:.1f}) | | the same 160 steps |")
    names = list(rows)
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [rows[n][0] for n in names], 0.4, label="top-1")
    ax.bar([i + 0.2 for i in x], [rows[n][1] for n in names], 0.4, label="balanced")
    ax.set_xticks(list(x), names, rotation=25, ha="right")
    ax.set_ylabel("linear probe, all labels (%)")
    ax.set_title(f"{study['data']}: {minutes} of training each")
    low = min(min(v) for v in rows.values())
    ax.set_ylim(max(0, low - 10), 100 if study["data"] == "fashion-mnist" else 85)
    ax.legend(loc="upper right")
fig.tight_layout()
fig.savefig(png, dpi=120)
print(f"\nwrote {png}")
