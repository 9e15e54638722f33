"""Shared by the bench-*.sh scripts: writes a report (markdown) and its JSON summary for bench/README.md
(`{"date", "report", "rows"}`, see scripts/bench-all.sh), each under a temporary name then renamed."""
import json
import os


def write(report, lines, date, rows):
    with open(report + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(report + ".tmp", report)
    json_path = report.removesuffix(".md") + ".json"
    with open(json_path + ".tmp", "w") as f:
        json.dump(dict(date=date, report=report, rows=rows), f, indent=1)
    os.replace(json_path + ".tmp", json_path)
    print("\n".join(lines))
