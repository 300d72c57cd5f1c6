"""Linear-probe accuracy against training wall-clock: the table and figure of scripts/results-fashion-mnist.

  python scripts/reference/accuracy_curve.py RUN_DIR OUT_DIR [CORES]   → OUT/curve.json, curve.md, curve.png
                                                                 (CORES: the x axis's note, default "2 cores")
  python scripts/reference/accuracy_curve.py --plot JSON PNG   → redraw a curve.json
                                                                 (RESULTS.md: results/fashion-mnist-accuracy-time.json)

curve.json: {"title": ..., "curves": {label: [[minutes, top-1 %], ...]}, "baselines": {name: top-1 %}}.
lejepa's time at step s is the sum of its step times up to s (metrics.jsonl, data waits included, the online
probe's evaluations excluded); the reference logs seconds since its first step.
"""
import glob, itertools, json, os, re, sys


def plot(curve, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    styles = ["o-", "o--", "s-", "^-", "^--", "d-", "d--"]
    for (label, points), style in zip(curve["curves"].items(), itertools.cycle(styles)):  # every curve drawn
        if points:
            ax.plot([t for t, _ in points], [a for _, a in points], style, label=label)
    for (name, a), (color, style) in zip(curve["baselines"].items(), [("gray", ":"), ("black", "--")]):
        ax.axhline(a, linestyle=style, color=color, linewidth=1, label=name)
    ax.set_xlabel(f"training wall-clock (minutes, {curve.get('cores', '2 cores')})")
    ax.set_ylabel("frozen linear probe top-1 (%)")
    ax.set_title(curve.get("title", "Fashion-MNIST: accuracy against training time"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def from_probes(run, out, cores):
    probes = os.path.join(out, "probes")

    def accuracy(name):
        with open(os.path.join(probes, name + ".json")) as f:
            return 100 * json.load(f)["accuracy"]

    seconds, total = {}, 0.0
    for line in open(os.path.join(run, "metrics.jsonl")):
        record = json.loads(line)
        if "step_seconds" in record:
            total += record["step_seconds"]
            seconds[record["step"]] = total
    ours = sorted((seconds[int(m.group(1))] / 60, accuracy(f"lejepa-step{m.group(1)}"))
                  for f in glob.glob(os.path.join(probes, "lejepa-step*.json"))
                  for m in [re.search(r"lejepa-step(\d+)\.json$", f)])
    reference = []
    reference_metrics = os.path.join(out, "reference", "metrics.jsonl")
    for line in open(reference_metrics) if os.path.exists(reference_metrics) else []:
        record = json.loads(line)
        if "backbone" in record:
            name = "reference-" + os.path.basename(record["backbone"]).removesuffix(".safetensors")
            if os.path.exists(os.path.join(probes, name + ".json")):
                reference.append((record["seconds"] / 60, accuracy(name)))
    with open(os.path.join(probes, "baselines.json")) as f:
        rows = json.load(f)["rows"]
    baselines = {name: 100 * rows[name]["all"]["accuracy"] for name in rows}
    return {"title": "Fashion-MNIST: accuracy against training time",
            "curves": {"lejepa": ours, **({"PyTorch reference": sorted(reference)} if reference else {})},
            "baselines": baselines, "cores": cores}


if __name__ == "__main__":
    if sys.argv[1] == "--plot":
        plot(json.load(open(sys.argv[2])), sys.argv[3])
        sys.exit()
    out = sys.argv[2]
    curve = from_probes(sys.argv[1], out, sys.argv[3] if len(sys.argv) > 3 else "2 cores")
    with open(os.path.join(out, "curve.json"), "w") as f:
        json.dump(curve, f, indent=1)
    with open(os.path.join(out, "curve.md"), "w") as f:
        labels = list(curve["curves"])
        f.write("| training wall-clock | " + " | ".join(labels) + " |\n|---" + "|---" * len(labels) + "|\n")
        for column, label in enumerate(labels):
            for t, a in curve["curves"][label]:
                cells = ["" if c != column else f"{a:.2f}%" for c in range(len(labels))]
                f.write(f"| {t:.1f} min | " + " | ".join(cells) + " |\n")
        for name, a in curve["baselines"].items():
            f.write(f"| ({name}) | {a:.2f}% |" + " |" * (len(labels) - 1) + "\n")
    print(open(os.path.join(out, "curve.md")).read())
    plot(curve, os.path.join(out, "curve.png"))
