"""Sets two operator profiles of one training step side by side: lejepa's and the reference's.

    target/release/lejepa bench --workloads model --model-archs vit-tiny-patch4-depth6 --precisions f32 \\
        --rounds 1 --profile profiles
    .venv/bin/python benches/reference/compare_profiles.py profiles/vit-tiny-patch4-depth6-f32-{lejepa,reference}.json

Both files are Chrome traces written by PyTorch's own profiler (Kineto): `lejepa bench --profile` drives it
from C++ (src/shim/profiler.cpp), the reference from `torch.profiler`. Each operator's *self* time is its
duration less that of the operators it called (nested events of the same thread), so the columns add up to
the time spent in operators, and an operator that one side calls and the other does not stands out.
"""
import argparse
import json
from collections import defaultdict


def self_times(path):
    """{operator name: [calls, self µs]} and the time covered by top-level operators (µs)."""
    with open(path) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X" and e.get("cat") == "cpu_op"]
    table = defaultdict(lambda: [0, 0.0])
    top_level = 0.0

    def close(entry):  # an operator ends: count it with what is left of its duration
        _, name, self_us = entry
        table[name][0] += 1
        table[name][1] += self_us

    by_thread = defaultdict(list)
    for e in events:
        by_thread[(e["pid"], e["tid"])].append(e)
    for thread_events in by_thread.values():
        thread_events.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []  # open ancestors: [end, name, self µs]
        for e in thread_events:
            while stack and e["ts"] >= stack[-1][0]:
                close(stack.pop())
            if stack:
                stack[-1][2] -= e["dur"]
            else:
                top_level += e["dur"]
            stack.append([e["ts"] + e["dur"], e["name"], float(e["dur"])])
        while stack:
            close(stack.pop())
    return table, top_level


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("ours")
    p.add_argument("reference")
    p.add_argument("--top", type=int, default=30, help="operators shown, by the larger self time of the two")
    a = p.parse_args()
    ours, ours_total = self_times(a.ours)
    theirs, their_total = self_times(a.reference)
    names = sorted(set(ours) | set(theirs), key=lambda n: -max(ours.get(n, [0, 0])[1], theirs.get(n, [0, 0])[1]))
    print(f"{'operator':44} {'calls ours/ref':>15} {'self ms ours':>13} {'self ms ref':>12} {'ours − ref':>11}")
    for name in names[: a.top]:
        (oc, ot), (tc, tt) = ours.get(name, [0, 0.0]), theirs.get(name, [0, 0.0])
        print(f"{name[:44]:44} {f'{oc}/{tc}':>15} {ot / 1e3:13.1f} {tt / 1e3:12.1f} {(ot - tt) / 1e3:+11.1f}")
    rest = lambda table: sum(t for n, (_, t) in table.items() if n not in names[: a.top]) / 1e3
    print(f"{'(all other operators)':44} {'':>15} {rest(ours):13.1f} {rest(theirs):12.1f} {rest(ours) - rest(theirs):+11.1f}")
    print(f"{'time inside operators':44} {'':>15} {ours_total / 1e3:13.1f} {their_total / 1e3:12.1f} {(ours_total - their_total) / 1e3:+11.1f}")
    print(f"{'operator calls':44} {f'{sum(c for c, _ in ours.values())}/{sum(c for c, _ in theirs.values())}':>15}")


if __name__ == "__main__":
    main()
