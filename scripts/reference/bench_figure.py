"""The model-step rows of one `lejepa bench --json` run as a figure: per row, lejepa's images/s over the
reference's (left) and each side's share of the GEMM peak measured in the same run (right).
  python scripts/reference/bench_figure.py BENCH.txt FIGURE.png
BENCH.txt is the bench's stdout (its last line is the JSON report). Rows without a reference are left out.
"""
import json, sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

bench, png = sys.argv[1], sys.argv[2]
with open(bench) as f:
    report = json.loads(f.read().strip().splitlines()[-1])
rows = [r for r in report["rows"] if r["workload"].startswith(("(a)", "(e)")) and r["ratio"] is not None]


def label(workload):
    """"(e) paper step vit-small-patch16 f32, 2×224 + 6×96 px, batch 8, vs eager" → two short lines."""
    name, _, against = workload.partition(", vs ")
    head = name.split(",")[0].replace("(a) model step ", "").replace("(e) paper step ", "paper ")
    return head + ("\nvs " + against if against else "\nvs eager")


labels = [label(r["workload"]) for r in rows]
y = range(len(rows))
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.55 * len(rows) + 1.6), sharey=True)
left.barh(y, [r["ratio"] for r in rows], color="tab:blue")
left.axvline(1.0, color="black", linewidth=0.8)
left.set_xlim(0, 1.15 * max(r["ratio"] for r in rows))
for i, r in enumerate(rows):
    left.text(r["ratio"] + 0.01, i, f"{r['ratio']:.2f}×", va="center", fontsize=8)
left.set_yticks(list(y), labels, fontsize=8)
left.invert_yaxis()
left.set_xlabel("lejepa images/s ÷ PyTorch's (same run)")
height = 0.38
right.barh([i - height / 2 for i in y], [100 * r["ours_peak_fraction"] for r in rows], height, label="lejepa", color="tab:blue")
right.barh([i + height / 2 for i in y], [100 * r["reference_peak_fraction"] for r in rows], height, label="PyTorch", color="tab:gray")
right.set_xlabel("% of the GEMM peak (model FLOP utilisation)")
right.legend(fontsize=8, loc="lower right")
peak = report["gemm_peak_f32"] / 1e9
fig.suptitle(f"Model steps, {report['cpu']}, {report['threads']} threads, f32 GEMM peak {peak:.0f} GFLOP/s", fontsize=10)
fig.tight_layout()
fig.savefig(png, dpi=110)
print(f"wrote {png}")
