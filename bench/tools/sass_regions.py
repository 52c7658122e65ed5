"""Where a kernel's time goes, from ncu's source view: instructions executed and warp-stall
samples per region of SASS between barriers (a region is a loop body, a select pass, a sort...),
and the stall reasons of the whole kernel.

    ncu -k regex:topk_kernel --launch-skip 3 --launch-count 1 --section SourceCounters \\
        --section WarpStateStats -o d16 python3 bench/tools/profile_cuda.py --B 1024 --d 16
    ncu -i d16.ncu-rep --page source --csv --print-source sass > d16_sass.csv
    python3 bench/tools/sass_regions.py d16_sass.csv [--min 0.01]
"""
import argparse
import csv


def load(path):
    rows = list(csv.reader(open(path)))
    head = next(i for i, r in enumerate(rows) if r and r[0] == "Address")
    return rows[head], rows[head + 1:]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("csv")
    p.add_argument("--min", type=float, default=0.01, help="smallest share of instructions or samples shown")
    a = p.parse_args()
    head, data = load(a.csv)
    col = {name: i for i, name in enumerate(head)}
    src, ins, smp = col["Source"], col["Instructions Executed"], col["Warp Stall Sampling (All Samples)"]
    num = lambda r, c: float(r[c] or 0)  # noqa: E731
    total_i = sum(num(r, ins) for r in data) or 1.0
    total_s = sum(num(r, smp) for r in data) or 1.0
    print(f"{total_i:.0f} warp instructions, {total_s:.0f} stall samples")
    print("first..last SASS line | % instructions | % samples | hottest line")
    start = 0
    for i, r in enumerate(data):
        op = r[src].split()
        ends = any(w.startswith(("BAR", "EXIT", "MEMBAR")) for w in op[:2]) or i == len(data) - 1
        if not ends:
            continue
        region = data[start:i + 1]
        share_i = sum(num(x, ins) for x in region) / total_i
        share_s = sum(num(x, smp) for x in region) / total_s
        if share_i >= a.min or share_s >= a.min:
            hot = max(region, key=lambda x: num(x, smp))
            print(f"{start:5d}..{i:<5d} | {100 * share_i:5.1f} | {100 * share_s:5.1f} | {hot[src].strip()[:60]}")
        start = i + 1
    reasons = {c[len("stall_"):]: sum(num(r, col[c]) for r in data)
               for c in head if c.startswith("stall_") and "Not Issued" not in c}
    total_r = sum(reasons.values()) or 1.0
    print("stall reasons:", ", ".join(f"{k} {100 * v / total_r:.0f}%"
                                      for k, v in sorted(reasons.items(), key=lambda x: -x[1]) if v / total_r >= 0.02))


if __name__ == "__main__":
    main()
