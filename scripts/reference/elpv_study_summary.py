"""Gathers scripts/results-elpv-study's probe reports into one record per (features, task, shots, seed):
  python3 scripts/reference/elpv_study_summary.py OUT > OUT/summary.json
OUT/seed<N>/ holds the reports of pretraining seed N. Each record's accuracy and balanced accuracy are means over
the probe's label draws (one draw with all labels); "draws" says how many. Features: "in-domain", "transfer",
"random-init", "pixels" (frozen linear probe), "supervised" (the linear probe of the network trained on all
labels), "supervised-accuracy" (that network's own accuracy), "finetune-in-domain", "finetune-random".
"""
import glob, json, os, re, sys

out = sys.argv[1]
tasks = {"elpv": "4-level", "elpv-binary": "binary"}
records = []


def add(features, task, seed, per_shot, only=None):
    for shots, scores in per_shot.items():
        if only is not None and shots not in only:
            continue
        records.append({
            "features": features, "task": task, "shots": shots if shots == "all" else int(shots), "seed": seed,
            "accuracy": scores["accuracy"], "balanced_accuracy": scores["balanced_accuracy"], "draws": scores["seeds"],
        })


for folder in sorted(glob.glob(os.path.join(out, "seed*"))):
    seed = int(re.search(r"seed(\d+)$", folder).group(1))
    for data, task in tasks.items():
        def report(name):
            path = os.path.join(folder, f"{name}-{data}.json")
            return json.load(open(path))["rows"] if os.path.exists(path) else {}
        for name, rows in (("probe-in-domain", report("probe-in-domain")), ("probe-transfer", report("probe-transfer"))):
            for row, per_shot in rows.items():
                features = {"random init": "random-init", "raw pixels": "pixels"}.get(row, name.removeprefix("probe-"))
                add(features, task, seed, per_shot)
        for row, per_shot in report("finetune").items():
            if row == "random init":
                add("finetune-random", task, seed, per_shot)
                add("supervised-accuracy", task, seed, per_shot, only={"all"})
            else:
                add("finetune-in-domain", task, seed, per_shot)
        for row, per_shot in report("probe-supervised").items():
            add("supervised", task, seed, per_shot)

json.dump(records, sys.stdout, indent=1)
print()
