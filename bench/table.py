#!/usr/bin/env python3
"""Tables for the bench scripts: bench/table.py OUT/results.tsv [LABEL=A/B ...]  (markdown on stdout).

Ratios to print come as LABEL=A/B arguments (scenario A over scenario B); without any, bench/auth's.

1. Medians per scenario (req/s, p50, p99, proxy CPU %, requests per proxy CPU-second).
2. Ratios, computed inside each round (the peers of one round ran within ~2 minutes of each
   other) and then the median over rounds; the per-round values are listed too.
3. The cold path: proxy CPU per request (1 / requests per CPU-second) of the cold runs minus that
   of open-cold (the same tokens on the no-auth route), i.e. the worker CPU one verification adds;
   and the same from wall time (1/req/s), which equals it only when the proxy's core is saturated.
"""
import csv
import statistics as st
import sys

rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
ratio_args = [a.rpartition("=") for a in sys.argv[2:]]


def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


order, by = [], {}
for r in rows:
    s = r["scenario"]
    if s not in by:
        order.append(s)
        by[s] = {}
    by[s][int(r["round"])] = r
rounds = sorted({int(r["round"]) for r in rows})


def med(xs):
    xs = [x for x in xs if x is not None]
    return st.median(xs) if xs else None


def col(s, k):
    return [num(by[s][r][k]) for r in rounds if r in by.get(s, {})]


def fmt(x, f="{:,.0f}"):
    return "-" if x is None else f.format(x)


print(f"Medians of {len(rounds)} rounds\n")
print("| scenario | peer | req/s | p50 ms | p99 ms | proxy CPU % | req per proxy CPU-s | non-2xx (sum) |")
print("|---|---|---|---|---|---|---|---|")
for s in order:
    peer = next(iter(by[s].values()))["peer"]
    n2 = sum(int(num(by[s][r]["non2xx"]) or 0) for r in by[s])
    print(f"| {s} | {peer} | {fmt(med(col(s, 'rps')))} | {fmt(med(col(s, 'p50_ms')), '{:.2f}')} | "
          f"{fmt(med(col(s, 'p99_ms')), '{:.2f}')} | {fmt(med(col(s, 'cpu_pct')))} | "
          f"{fmt(med(col(s, 'req_per_cpu_s')))} | {n2} |")

RATIOS = [  # label, numerator, denominator
    ("JWT HS256 hot / no auth (same request bytes)", "jwt-hs", "open-rs"),
    ("JWT RS256 hot / no auth (same request bytes)", "jwt-rs", "open-rs"),
    ("API key / no auth (no credential)", "key", "open-plain"),
    ("no auth, RS256 header / no credential", "open-rs", "open-plain"),
    ("sluice no auth / nginx (no credential)", "open-plain", "nginx-plain"),
    ("sluice no auth / nginx (RS256 header)", "open-rs", "nginx-rs"),
    ("sluice JWT HS256 hot / nginx (RS256 header)", "jwt-hs", "nginx-rs"),
    ("sluice JWT RS256 hot / nginx (RS256 header)", "jwt-rs", "nginx-rs"),
    ("sluice API key / nginx (no credential)", "key", "nginx-plain"),
    ("cold RS256 / open-cold", "cold-rs", "open-cold"),
    ("cold ES256 / open-cold", "cold-es", "open-cold"),
]


if ratio_args:
    RATIOS = [(label, *spec.split("/", 1)) for label, _, spec in ratio_args]


def per_round(a, b, k):
    out = []
    for r in rounds:
        x = num(by.get(a, {}).get(r, {}).get(k)) if r in by.get(a, {}) else None
        y = num(by.get(b, {}).get(r, {}).get(k)) if r in by.get(b, {}) else None
        out.append(x / y if x is not None and y else None)
    return out


print("\nRatios (per round, then the median)\n")
print("| ratio | req/s median | req/s per round | req per proxy CPU-s median | p99 ms (a / b, medians) |")
print("|---|---|---|---|---|")
for label, a, b in RATIOS:
    if a not in by or b not in by:
        continue
    pr = per_round(a, b, "rps")
    pc = per_round(a, b, "req_per_cpu_s")
    print(f"| {label} | **{fmt(med(pr), '{:.3f}')}** | {' '.join(fmt(x, '{:.2f}') for x in pr)} | "
          f"{fmt(med(pc), '{:.3f}')} | {fmt(med(col(a, 'p99_ms')), '{:.2f}')} / {fmt(med(col(b, 'p99_ms')), '{:.2f}')} |")

if "open-cold" in by:
    print("\nCold path: worker time added per request (every request a verification)\n")
    print("| scenario | CPU µs/request | open-cold CPU µs/request | added CPU µs (median of rounds) | "
          "added wall µs (1/req/s) | per round, CPU µs |")
    print("|---|---|---|---|---|---|")
    for s in ("cold-rs", "cold-es"):
        if s not in by:
            continue
        d_cpu, d_wall = [], []
        for r in rounds:
            if r not in by[s] or r not in by["open-cold"]:
                continue
            a, b = num(by[s][r]["req_per_cpu_s"]), num(by["open-cold"][r]["req_per_cpu_s"])
            ra, rb = num(by[s][r]["rps"]), num(by["open-cold"][r]["rps"])
            d_cpu.append(1e6 / a - 1e6 / b if a and b else None)
            d_wall.append(1e6 / ra - 1e6 / rb if ra and rb else None)
        cpu_a = med([1e6 / x for x in col(s, "req_per_cpu_s") if x])
        cpu_b = med([1e6 / x for x in col("open-cold", "req_per_cpu_s") if x])
        print(f"| {s} | {fmt(cpu_a, '{:.1f}')} | {fmt(cpu_b, '{:.1f}')} | **{fmt(med(d_cpu), '{:.1f}')}** | "
              f"{fmt(med(d_wall), '{:.1f}')} | {' '.join(fmt(x, '{:.1f}') for x in d_cpu)} |")

print("\nPer round: req/s (p99 ms)\n")
print("| scenario | " + " | ".join(f"r{r}" for r in rounds) + " |")
print("|---|" + "---|" * len(rounds))
for s in order:
    cells = []
    for r in rounds:
        x = by[s].get(r)
        cells.append(f"{fmt(num(x['rps']))} ({fmt(num(x['p99_ms']), '{:.2f}')})" if x else "-")
    print(f"| {s} | " + " | ".join(cells) + " |")
