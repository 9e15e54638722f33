#!/usr/bin/env bash
# `make bench`: runs every benchmark target this checkout's Makefile has, then writes
# bench/README.md: one table of ratios against references measured in the same runs.
#
# A benchmark slots in by being a make target named in BENCHMARKS and writing, next to its
# report, a JSON summary `{"date", "report", "rows": [{"benchmark", "measured", "reference",
# "ratio", "target", "met"}]}` (bench/<name>.json; see scripts/bench-slice.sh). A target that is
# missing here is listed as not run; one without a summary is linked by its report only.
# The table holds every summary in bench/, each row dated by its own run: those of this run and,
# kept from earlier runs, those of benchmarks not run this time. BENCHMARKS= (empty) only rebuilds
# the table (`make bench-readme`).
#
#   BENCHMARKS="bench-export bench-export-fp8 bench-slice bench-step-cost bench-calibration bench-engines bench-serve bench-scheduling bench-memory"   (the order they run in)
set -uo pipefail
cd "$(dirname "$0")/.."
BENCHMARKS=${BENCHMARKS-bench-export bench-export-fp8 bench-slice bench-step-cost bench-calibration bench-engines bench-serve bench-scheduling bench-memory}
started=$(date -u +%s)
status=()
for target in $BENCHMARKS; do
    if ! make -n "$target" > /dev/null 2>&1; then
        status+=("$target not-in-makefile")
        continue
    fi
    echo "bench: make $target" >&2
    if make --no-print-directory "$target"; then
        status+=("$target ok")
    else
        status+=("$target failed($?)")
    fi
done

STATUS=$(printf '%s\n' "${status[@]}") STARTED=$started COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown) \
    python3 - <<'PY'
import datetime, glob, json, os, platform
started = int(os.environ["STARTED"])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")) / 1048576
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
status = [line.split(" ", 1) for line in os.environ["STATUS"].splitlines() if line]  # (target, result) run now
lines = [
    "# Benchmarks",
    "",
    f"`make {'bench' if status else 'bench-readme'}`, {now}, commit {os.environ['COMMIT']}: {cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM.",
    "Every ratio compares with a reference measured in the same run on the same machine (times are",
    "wall clock; other work may share the machine, see each report's load average). A row's date is",
    "its own run's: rows of benchmarks not run this time are kept from their last run.",
    "",
    "| benchmark | measured | reference | ratio | target | met | run | report |",
    "|---|---|---|---|---|---|---|---|",
]
summarized = set()
for path in sorted(glob.glob("bench/*.json")):
    try:
        summary = json.load(open(path))
        rows, date = summary["rows"], summary["date"]
    except (ValueError, KeyError, TypeError):
        continue  # another kind of JSON (e.g. bench/accuracy.json)
    report = summary.get("report", path)
    summarized.add(os.path.basename(report))
    link = f"[{os.path.basename(report)}]({os.path.relpath(report, 'bench')})"
    ran = datetime.datetime.strptime(date, "%Y-%m-%dT%H:%MZ").replace(tzinfo=datetime.timezone.utc)
    this_run = " (this run)" if ran.timestamp() >= started // 60 * 60 else ""
    for r in rows:
        met = {True: "yes", False: "**no**", None: ""}[r.get("met")]
        lines.append(f"| {r['benchmark']} | {r['measured']} | {r['reference']} | {r['ratio']:.2f}× | {r.get('target', '')} | {met} | {date}{this_run} | {link} |")
others = sorted(os.path.basename(p) for p in glob.glob("bench/*.md")
                if os.path.basename(p) not in summarized | {"README.md", "NOTES.md"})
lines += ["", "Reports without summary rows: " + ", ".join(f"[{r}]({r})" for r in others) + "."]
lines += ["", "| make target | result |", "|---|---|"] if status else []
for target, result in status:
    lines.append(f"| `{target}` | {result.replace('not-in-makefile', 'not in this checkout: not run')} |")
open("bench/README.md.tmp", "w").write("\n".join(lines) + "\n")
os.replace("bench/README.md.tmp", "bench/README.md")
print("\n".join(lines))
PY
