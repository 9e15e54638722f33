"""bench/serve.md from what scripts/bench-serve.sh measured: perf_analyzer's CSV per concurrency
(latency percentiles, throughput, server queue/compute) and local `fluxbuild generate --json`
reports (each prompt alone; all prompts as one batch)."""
import argparse
import csv
import json
import os
import platform
import statistics
from pathlib import Path


def perf(dir, concurrency):
    with open(dir / f"perf-c{concurrency}.csv") as f:
        row = next(csv.DictReader(f))
    ms = lambda key: int(row[key]) / 1000.0  # noqa: E731  (perf_analyzer reports microseconds)
    return {
        "concurrency": concurrency,
        "throughput_img_s": float(row["Inferences/Second"]),
        "p50_ms": ms("p50 latency"),
        "p90_ms": ms("p90 latency"),
        "p99_ms": ms("p99 latency"),
        "avg_ms": ms("Avg latency"),
        "server_queue_ms": ms("Server Queue"),
        "server_compute_ms": ms("Server Compute Infer"),
    }


def local(report):
    """Seconds of one `generate` process: wall total, and network compute (loads and tokenizer files excluded)."""
    stages = report["seconds"]["stages"]
    compute = sum(s["run_s"] for s in stages if s["stage"] != "tokenize")
    return {"images": len(report["files"]), "total_s": report["seconds"]["total"], "compute_s": compute}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--height", type=int, required=True)
    p.add_argument("--width", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--requests", type=int, required=True)
    p.add_argument("--fluxbuild", required=True)
    p.add_argument("--md", type=Path, required=True)
    p.add_argument("--json", type=Path, required=True)
    a = p.parse_args()

    served = [perf(a.dir, c) for c in (1, 4, 8)]
    alone = [local(json.loads(f.read_text())) for f in sorted(a.dir.glob("local-alone-*.json"))]
    batch = local(json.loads((a.dir / "local-batch.json").read_text()))
    alone_compute_ms = statistics.median(x["compute_s"] for x in alone) * 1000
    alone_total_ms = statistics.median(x["total_s"] for x in alone) * 1000
    batch_img_s = batch["images"] / batch["compute_s"]
    sequential_img_s = 1000 / alone_compute_ms
    prompts = len(json.loads((a.dir / "input-data.json").read_text())["data"])
    result = {
        "settings": {"height": a.height, "width": a.width, "steps": a.steps, "prompts": prompts,
                     "requests_per_concurrency": a.requests, "fluxbuild": os.path.relpath(a.fluxbuild)},
        "served": served,
        "local": {"alone": alone, "batch": batch, "alone_median_compute_ms": alone_compute_ms,
                  "alone_median_total_ms": alone_total_ms, "batch_img_s": batch_img_s},
    }
    a.json.write_text(json.dumps(result, indent=2) + "\n")

    c1 = served[0]
    lines = [
        "# Serving benchmark: Triton (cpu target) under perf_analyzer vs local `fluxbuild generate`",
        "",
        f"`make bench-serve` (scripts/bench-serve.sh). The tiny FLUX.1-dev fixture (random weights, real tokenizers)",
        f"exported and packaged for the cpu target, served by the pinned Triton 2.51 (PyPI nvidia-pytriton, Python",
        f"backend, ONNX Runtime 1.32 on the CPU) on 127.0.0.1, driven by perf_analyzer 2.60 (PyPI perf-analyzer,",
        f"HTTP, synchronous clients) with the input-data file `fluxbuild perf-data` wrote: {prompts} prompts from",
        f"profiles/calibration-prompts.txt, {a.height}x{a.width} px, {a.steps} steps, seeds 42.. (one per prompt).",
        f"{a.requests} measured requests per concurrency after one warm-up request per client. Local: the same",
        f"graphs in ONNX Runtime through `{os.path.relpath(a.fluxbuild)} generate`, each prompt alone with the same seed, and all",
        f"{prompts} prompts as one batch. Machine: {os.cpu_count()} CPU cores, {platform.machine()}, shared with other",
        "work while measuring, so compare ratios within this run, not seconds across runs.",
        "",
        "## Triton under perf_analyzer",
        "",
        "| concurrency | throughput (img/s) | p50 (ms) | p90 (ms) | p99 (ms) | server queue (ms) | server compute (ms) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in served:
        lines.append(f"| {s['concurrency']} | {s['throughput_img_s']:.2f} | {s['p50_ms']:.0f} | {s['p90_ms']:.0f} | "
                     f"{s['p99_ms']:.0f} | {s['server_queue_ms']:.0f} | {s['server_compute_ms']:.0f} |")
    lines += [
        "",
        "## Next to local generate (same prompts, size, steps, seeds)",
        "",
        "| | value | Triton / local |",
        "|---|---:|---:|",
        f"| local, one prompt: network compute, median of {len(alone)} (ms) | {alone_compute_ms:.0f} | "
        f"p50 at concurrency 1: {c1['p50_ms'] / alone_compute_ms:.2f}x |",
        f"| local, one prompt: whole process incl. loading graphs and tokenizers, median (ms) | {alone_total_ms:.0f} | "
        f"p50 at concurrency 1: {c1['p50_ms'] / alone_total_ms:.2f}x |",
        f"| local, prompts one after another (img/s, from the compute median) | {sequential_img_s:.2f} | "
        f"concurrency 1: {c1['throughput_img_s'] / sequential_img_s:.2f}x |",
        f"| local, all {prompts} prompts as one batch (img/s, network compute) | {batch_img_s:.2f} | "
        f"concurrency 8: {served[2]['throughput_img_s'] / batch_img_s:.2f}x |",
        "",
        "Local network compute excludes loading the graphs and the tokenizer files (a server has them loaded);",
        "Triton's latency is the client's: HTTP, queueing in `flux`'s dynamic batcher, tokenizing, the BLS calls",
        "to the four network models and the PNG-free uint8 image back. Server queue and compute are Triton's",
        "own averages for `flux` (nv_inference_queue_duration_us, nv_inference_compute_infer_duration_us: the",
        "two counters the Helm chart's autoscaler divides). At concurrency 1 the queue time is the dynamic",
        "batcher's wait for a fuller batch (`fluxbuild package --queue-delay-us`, 20 ms by default).",
        "",
    ]
    a.md.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
