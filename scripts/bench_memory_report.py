"""bench/memory.md and bench/memory.json from what scripts/bench-memory.sh measured (in $WORK)."""

import json
import os

import bench_report

work, report = os.environ["WORK"], os.environ["REPORT"]
whiches = os.environ["WHICHES"].split()
vae = json.load(open(os.path.join(work, "vae.json")))
served = {w: json.load(open(os.path.join(work, f"served-{w}.json"))) for w in whiches}
gib = lambda b: f"{b / 2**30:.2f} GiB"
date = bench_report.now()
mem = bench_report.memory_gib()

lines = [
    "# Memory benchmark: the largest allowed request and the VAE decoder's memory model",
    "",
    f"{date}, commit {os.environ['COMMIT']}, {os.cpu_count()} cores, {mem:.0f} GiB RAM (shared with other work). "
    "Networks: the tiny FLUX.1-dev fixture's CLIP, T5 and transformer, and a full-size VAE decoder "
    "(synthetic 50M-parameter checkpoint), all fp32, run by ONNX Runtime 1.32 on the CPU.",
    "",
    "## The VAE decoder alone (ONNX Runtime, arena off, one fresh process per run)",
    "",
    "| image | batch | after load | peak | peak − load | per output pixel | after the run |",
    "|---|---|---|---|---|---|---|",
]
per_pixel = []
for run in vae:
    pixels = run["side"] ** 2 * run["batch"]
    grown = run["peak"] - run["loaded"]
    per_pixel.append((run, grown / pixels))
    lines.append(
        f"| {run['side']}² | {run['batch']} | {gib(run['loaded'])} | {gib(run['peak'])} | {gib(grown)} | "
        f"{grown / pixels:.0f} B | {gib(run['after'])} |"
    )
single = [(r, b) for r, b in per_pixel if r["batch"] == 1]
worst = max(b for _, b in single)
largest = max(single, key=lambda rb: rb[0]["side"])
lines += [
    "",
    f"Activation memory per output pixel of one image: at most {worst:.0f} B over these sizes "
    f"({largest[1]:.0f} B at {largest[0]['side']}²); a batch of n images decoded at once takes n times that.",
]

lines += ["", "## Served: the largest request the cpu repository allows", ""]
for which in whiches:
    s = served[which]
    limits = open(os.path.join(work, f"limits-{which}.txt")).read().split()
    lines += [
        f"### {which}" + (f" ({os.environ['BASELINE_NAME']})" if which == "baseline" else ""),
        "",
        f"Request: `generate --server ... {s['request']}`, {s['seconds']:.1f} s.",
        "",
        "| process | before | peak | after |",
        "|---|---|---|---|",
    ]
    for name, p in sorted(s["processes"].items()):
        lines.append(f"| {name} | {gib(p['before'])} | {gib(p['peak'])} | {gib(p['after'])} |")
    t = s["total_pss"]
    lines += [
        f"| all (sum of PSS) | {gib(t['before'])} | {gib(t['peak'])} | {gib(t['after'])} |",
        "",
        f"Against the memory budget the repository was packaged with (8 GiB, `package --memory-budget-mib`): "
        f"the deployment's peak is {t['peak'] / (8 << 30):.0%} of it; the request's own growth "
        f"(peak − before) {gib(t['peak'] - t['before'])}.",
        "",
    ]
rows = []
if "baseline" in served:
    b, c = served["baseline"]["processes"]["vae_decoder_0_0"], served["current"]["processes"]["vae_decoder_0_0"]
    lines += [
        f"VAE decoder backend: peak {gib(b['peak'])} -> {gib(c['peak'])} ({c['peak'] / b['peak']:.2f}×), "
        f"after the request {gib(b['after'])} -> {gib(c['after'])}. "
        f"The four images are byte-identical between the two: {os.environ['SAME']}.",
    ]
    rows.append(
        dict(
            benchmark=f"VAE backend peak, {served['current']['request'].split('--height ')[1].split()[0]}² x 4 served (current / baseline)",
            measured=gib(c["peak"]),
            reference=f"baseline {gib(b['peak'])}",
            ratio=round(c["peak"] / b["peak"], 2),
            target="",
            met=None,
        )
    )
c = served["current"]
rows.append(
    dict(
        benchmark="deployment peak (PSS), largest allowed request served",
        measured=gib(c["total_pss"]["peak"]),
        reference="before the request " + gib(c["total_pss"]["before"]),
        ratio=round(c["total_pss"]["peak"] / max(1, c["total_pss"]["before"]), 2),
        target="peak <= 8 GiB budget",
        met=c["total_pss"]["peak"] <= 8 << 30,
    )
)
bench_report.write(report, lines, date, rows, vae=vae, served=served)
