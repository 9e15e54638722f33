"""Shared by the bench-*.sh scripts: writes a report (markdown) and its JSON summary for bench/README.md
(`{"date", "report", "rows"}`, see scripts/bench-all.sh), each under a temporary name then renamed."""
import datetime
import json
import os


def now():
    """The report's date: UTC, to the minute."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


def memory_gib():
    """This machine's RAM (MemTotal) in GiB."""
    return next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal")) / 1048576


def write(report, lines, date, rows, **extra):
    with open(report + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(report + ".tmp", report)
    json_path = report.removesuffix(".md") + ".json"
    with open(json_path + ".tmp", "w") as f:
        json.dump(dict(date=date, report=report, rows=rows, **extra), f, indent=1)
    os.replace(json_path + ".tmp", json_path)
    print("\n".join(lines))
