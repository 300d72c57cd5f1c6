"""Linear-probe accuracy against training wall-clock for scripts/results-fashion-mnist.

lejepa's time at step s is the sum of its step times up to s (metrics.jsonl, data waits included,
the online probe's evaluations excluded); the reference logs seconds since its first step.
  python scripts/reference/accuracy_curve.py RUN_DIR OUT_DIR   → OUT/curve.json, curve.md, curve.png
"""
import glob, json, os, re, sys

run, out = sys.argv[1], sys.argv[2]
probes = os.path.join(out, "probes")


def accuracy(name):
    with open(os.path.join(probes, name + ".json")) as f:
        return json.load(f)["accuracy"]


seconds, total = {}, 0.0
for line in open(os.path.join(run, "metrics.jsonl")):
    record = json.loads(line)
    if "step_seconds" in record:
        total += record["step_seconds"]
        seconds[record["step"]] = total
ours = sorted((seconds[int(m.group(1))], accuracy(f"lejepa-step{m.group(1)}"))
              for f in glob.glob(os.path.join(probes, "lejepa-step*.json"))
              for m in [re.search(r"lejepa-step(\d+)\.json$", f)])
reference = []
for line in open(os.path.join(out, "reference", "metrics.jsonl")):
    record = json.loads(line)
    if "backbone" in record:
        name = "reference-" + os.path.basename(record["backbone"]).removesuffix(".safetensors")
        if os.path.exists(os.path.join(probes, name + ".json")):
            reference.append((record["seconds"], accuracy(name)))
with open(os.path.join(probes, "baselines.json")) as f:
    rows = json.load(f)["rows"]
baselines = {name: rows[name]["all"]["accuracy"] for name in rows}

curve = {"lejepa": ours, "reference": sorted(reference), "baselines": baselines}
with open(os.path.join(out, "curve.json"), "w") as f:
    json.dump(curve, f, indent=1)
with open(os.path.join(out, "curve.md"), "w") as f:
    f.write("| training wall-clock | lejepa | PyTorch reference |\n|---|---|---|\n")
    for t, a in ours:
        f.write(f"| {t / 60:.1f} min | {100 * a:.2f}% | |\n")
    for t, a in sorted(reference):
        f.write(f"| {t / 60:.1f} min | | {100 * a:.2f}% |\n")
    for name, a in baselines.items():
        f.write(f"| ({name}) | {100 * a:.2f}% | |\n")
print(open(os.path.join(out, "curve.md")).read())

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(7, 4.2))
for label, points, style in [("lejepa", ours, "o-"), ("PyTorch reference", sorted(reference), "s-")]:
    if points:
        ax.plot([t / 60 for t, _ in points], [100 * a for _, a in points], style, label=label)
for (name, a), color in zip(baselines.items(), ["gray", "silver"]):
    ax.axhline(100 * a, linestyle="--", color=color, label=name)
ax.set_xlabel("training wall-clock (minutes, 2 cores)")
ax.set_ylabel("frozen linear probe top-1 (%)")
ax.set_title("Fashion-MNIST: accuracy against training time")
ax.legend()
ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(os.path.join(out, "curve.png"), dpi=120)
