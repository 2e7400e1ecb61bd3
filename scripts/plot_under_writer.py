#!/usr/bin/env python3
"""Bar chart of benches/under_writer.rs results, as a hand-written SVG.

Reads Criterion's output for the groups `under_writer_1khz` and `no_writer`
(target/criterion/<group>/<variant>/<n>_readers/<baseline>/estimates.json,
with benchmark.json beside it for the ids) and draws read throughput per
reader thread, one cluster of bars per case (writer or not, reader count),
one bar per variant. The bar is the Criterion median time per read,
converted to millions of reads per second.

With one baseline (default `new`, the last run), the whisker is the 95%
confidence interval of that median. With several (`--baseline run1
--baseline run2 ...`, saved by `cargo bench --bench under_writer --
--save-baseline run1` and so on), the bar is the median over the runs of
each run's median and the whisker spans the lowest and highest run.

Also prints the figures as a Markdown table on stdout, for BENCHMARKS.md.
Python 3 standard library only.

    python3 scripts/plot_under_writer.py [--criterion-dir target/criterion]
        [--baseline NAME ...] [--out docs/under_writer.svg] [--note TEXT]
"""

import argparse
import json
import math
import os
import statistics
import sys
from xml.sax.saxutils import escape

GROUPS = [
    ("under_writer_1khz", "1 kHz writer"),
    ("no_writer", "no writer"),
]
# Known variants in display order, with their colours; unknown ones follow.
VARIANTS = [
    ("std_rwlock", "std::sync::RwLock", "#9e9e9e"),
    ("parking_lot_rwlock", "parking_lot::RwLock", "#6d8fb3"),
    ("arc_swap", "arc_swap::ArcSwap", "#d9a441"),
    ("rcu_cell_membarrier", "RcuCell (membarrier)", "#2e7d4f"),
    ("rcu_cell_fence", "RcuCell (fence)", "#8cc9a2"),
]
EXTRA_COLOURS = ["#b05f8a", "#7f6bb3", "#c0504d"]


def load(criterion_dir, baselines):
    """{(group, value_str): {function_id: [(median_ns, lo_ns, hi_ns) per baseline]}}"""
    results = {}
    for group, _ in GROUPS:
        group_dir = os.path.join(criterion_dir, group)
        if not os.path.isdir(group_dir):
            continue
        for function in sorted(os.listdir(group_dir)):
            function_dir = os.path.join(group_dir, function)
            if not os.path.isdir(function_dir) or function == "report":
                continue
            for value in sorted(os.listdir(function_dir)):
                for baseline in baselines:
                    run_dir = os.path.join(function_dir, value, baseline)
                    estimates_path = os.path.join(run_dir, "estimates.json")
                    if not os.path.isfile(estimates_path):
                        continue
                    with open(os.path.join(run_dir, "benchmark.json")) as f:
                        ids = json.load(f)
                    with open(estimates_path) as f:
                        median = json.load(f)["median"]
                    interval = median["confidence_interval"]
                    case = (ids["group_id"], ids["value_str"])
                    runs = results.setdefault(case, {}).setdefault(ids["function_id"], [])
                    runs.append(
                        (median["point_estimate"], interval["lower_bound"], interval["upper_bound"])
                    )
    return results


def summarize(runs):
    """(bar, whisker_low, whisker_high, n) in millions of reads per second."""
    to_mops = lambda ns: 1e3 / ns
    medians = [m for m, _, _ in runs]
    if len(runs) == 1:
        m, lo, hi = runs[0]
        # Less time per read is more throughput: the bounds swap.
        return to_mops(m), to_mops(hi), to_mops(lo), 1
    return (
        to_mops(statistics.median(medians)),
        to_mops(max(medians)),
        to_mops(min(medians)),
        len(runs),
    )


def readers_label(value_str):
    n = value_str.split("_")[0]
    return f"{n} reader" + ("" if n == "1" else "s")


def case_order(results):
    order = {g: i for i, (g, _) in enumerate(GROUPS)}

    def key(case):
        group, value = case
        try:
            readers = int(value.split("_")[0])
        except ValueError:
            readers = 0
        return (order.get(group, len(order)), readers, value)

    return sorted(results, key=key)


def variant_order(results):
    known = [v for v, _, _ in VARIANTS]
    seen = {f for per_case in results.values() for f in per_case}
    extra = sorted(seen - set(known))
    return [v for v in known if v in seen] + extra


def style(variant, index_among_extra):
    for v, label, colour in VARIANTS:
        if v == variant:
            return label, colour
    return variant, EXTRA_COLOURS[index_among_extra % len(EXTRA_COLOURS)]


def nice_axis(x):
    """A round axis maximum at or above x, and a round tick step (5-8 ticks)."""
    if x <= 0:
        return 1.0, 0.2
    raw = x / 6
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return math.ceil(x / step) * step, step


def draw(results, baselines, title, note):
    cases = case_order(results)
    variants = variant_order(results)
    extras = [v for v in variants if v not in {k for k, _, _ in VARIANTS}]
    styles = {v: style(v, extras.index(v) if v in extras else 0) for v in variants}
    summary = {
        case: {v: summarize(runs) for v, runs in per_case.items()}
        for case, per_case in results.items()
    }
    peak = max(hi for per_case in summary.values() for _, _, hi, _ in per_case.values())
    top, step = nice_axis(peak * 1.08)

    bar_w, bar_gap, cluster_gap = 34, 6, 40
    left, right, top_margin, bottom = 70, 20, 60, 105
    plot_h = 320
    cluster_w = len(variants) * (bar_w + bar_gap) - bar_gap
    plot_w = len(cases) * cluster_w + (len(cases) + 1) * cluster_gap
    width, height = left + plot_w + right, top_margin + plot_h + bottom
    y = lambda v: top_margin + plot_h * (1 - v / top)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="24" text-anchor="middle" font-size="15" '
        f'font-weight="bold">{escape(title)}</text>',
    ]
    runs_note = (
        f"bar: median of {len(baselines)} runs' Criterion medians; whisker: lowest to highest run"
        if len(baselines) > 1
        else "bar: Criterion median; whisker: its 95% confidence interval"
    )
    out.append(
        f'<text x="{width / 2}" y="42" text-anchor="middle" fill="#444">'
        f"{escape(runs_note)}</text>"
    )

    # Grid and axis.
    tick = 0.0
    while tick <= top + 1e-9:
        ty = y(tick)
        out.append(
            f'<line x1="{left}" y1="{ty:.1f}" x2="{left + plot_w}" y2="{ty:.1f}" '
            f'stroke="#e0e0e0"/>'
        )
        out.append(
            f'<text x="{left - 6}" y="{ty + 4:.1f}" text-anchor="end">{tick:g}</text>'
        )
        tick += step
    out.append(
        f'<line x1="{left}" y1="{top_margin}" x2="{left}" y2="{top_margin + plot_h}" '
        f'stroke="black"/>'
    )
    out.append(
        f'<line x1="{left}" y1="{top_margin + plot_h}" x2="{left + plot_w}" '
        f'y2="{top_margin + plot_h}" stroke="black"/>'
    )
    cy = top_margin + plot_h / 2
    out.append(
        f'<text x="18" y="{cy}" text-anchor="middle" transform="rotate(-90 18 {cy})">'
        f"million reads/s per reader thread</text>"
    )

    # Bars.
    group_labels = dict(GROUPS)
    for ci, case in enumerate(cases):
        group, value = case
        x0 = left + cluster_gap + ci * (cluster_w + cluster_gap)
        for vi, variant in enumerate(variants):
            if variant not in summary[case]:
                continue
            bar, lo, hi, _ = summary[case][variant]
            label, colour = styles[variant]
            bx = x0 + vi * (bar_w + bar_gap)
            out.append(
                f'<rect x="{bx}" y="{y(bar):.1f}" width="{bar_w}" '
                f'height="{top_margin + plot_h - y(bar):.1f}" fill="{colour}">'
                f"<title>{escape(label)}, {escape(group)}/{escape(value)}: "
                f"{bar:.1f} M reads/s ({1e3 / bar:.2f} ns per read)</title></rect>"
            )
            mid = bx + bar_w / 2
            out.append(
                f'<line x1="{mid}" y1="{y(hi):.1f}" x2="{mid}" y2="{y(lo):.1f}" stroke="black"/>'
            )
            for wy in (y(hi), y(lo)):
                out.append(
                    f'<line x1="{mid - 5}" y1="{wy:.1f}" x2="{mid + 5}" y2="{wy:.1f}" '
                    f'stroke="black"/>'
                )
            out.append(
                f'<text x="{mid}" y="{y(hi) - 5:.1f}" text-anchor="middle" font-size="10">'
                f"{bar:.0f}</text>"
            )
        cx = x0 + cluster_w / 2
        out.append(
            f'<text x="{cx}" y="{top_margin + plot_h + 18}" text-anchor="middle">'
            f"{escape(group_labels.get(group, group))}</text>"
        )
        out.append(
            f'<text x="{cx}" y="{top_margin + plot_h + 33}" text-anchor="middle" fill="#444">'
            f"{escape(readers_label(value))}</text>"
        )

    # Legend.
    lx, ly = left, top_margin + plot_h + 60
    for i, variant in enumerate(variants):
        label, colour = styles[variant]
        col, row = i % 3, i // 3
        x = lx + col * 210
        yy = ly + row * 20
        out.append(f'<rect x="{x}" y="{yy - 10}" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{x + 18}" y="{yy}">{escape(label)}</text>')
    if note:
        out.append(
            f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle" font-size="10" '
            f'fill="#666">{escape(note)}</text>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n", summary, cases, variants


def markdown(summary, cases, variants, baselines):
    multi = len(baselines) > 1
    head = "median of runs (range)" if multi else "Criterion median (95% CI)"
    lines = [
        f"| case | variant | ns per read | M reads/s per reader, {head} |",
        "|---|---|---|---|",
    ]
    group_labels = dict(GROUPS)
    for case in cases:
        group, value = case
        for variant in variants:
            if variant not in summary[case]:
                continue
            bar, lo, hi, n = summary[case][variant]
            where = f"{group_labels.get(group, group)}, {readers_label(value)}"
            lines.append(
                f"| {where} | `{variant}` | {1e3 / bar:.2f} | **{bar:.1f}** ({lo:.1f}-{hi:.1f}) |"
            )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--criterion-dir", default="target/criterion")
    parser.add_argument(
        "--baseline",
        action="append",
        help="Criterion baseline directory to read (repeatable); default: new",
    )
    parser.add_argument("--out", default="docs/under_writer.svg")
    parser.add_argument(
        "--title",
        default="Read throughput per reader, with a writer replacing the value 1,000 times/s",
    )
    parser.add_argument(
        "--note", default="", help="a line at the bottom (machine, commit, load)"
    )
    args = parser.parse_args()
    baselines = args.baseline or ["new"]

    results = load(args.criterion_dir, baselines)
    if not results:
        sys.exit(
            f"no under_writer results under {args.criterion_dir} for baseline(s) "
            f"{', '.join(baselines)}: run `cargo bench --bench under_writer` first"
        )
    incomplete = [
        f"{g}/{f}/{v}: {len(runs)} of {len(baselines)}"
        for (g, v), per_case in results.items()
        for f, runs in per_case.items()
        if len(runs) != len(baselines)
    ]
    if incomplete:
        sys.exit("results missing from some baselines: " + "; ".join(incomplete))

    svg, summary, cases, variants = draw(results, baselines, args.title, args.note)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write(svg)
    print(markdown(summary, cases, variants, baselines))
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
