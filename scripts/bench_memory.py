"""Memory of a served deployment during its largest allowed request (benchmark, not a test): the
resident memory of the Triton server and of each Python-backend stub (one per model), sampled
every 50 ms from /proc while `fluxbuild generate --server` runs the request, with a snapshot before
(after a small warm-up request) and one a few seconds after. Prints one JSON document.

    python bench_memory.py URL SERVER_PID REPO FLUXBUILD OUT_DIR "ARGS OF THE REQUEST..."
"""

import json
import os
import subprocess
import sys
import threading
import time


def children(server_pid, repo):
    """{name: pid}: the server itself and each stub, named by its model instance (`flux_0_2`)."""
    found = {"tritonserver": server_pid}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) != server_pid:
            continue
        args = [a.decode(errors="replace") for a in cmdline if a]
        if any(a.endswith("/model.py") and a.startswith(repo) for a in args):
            found[args[-2]] = int(entry)  # the instance name (`vae_decoder_0_0`) before its kind
    return found


def memory(pid):
    """(RSS, PSS) in bytes: PSS splits shared pages (the stubs' shared-memory region) between the
    processes that map them, so PSS adds up across processes."""
    values = {}
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                values[key] = int(rest.split()[0]) * 1024
    except OSError:
        return 0, 0
    return values.get("Rss", 0), values.get("Pss", 0)


def snapshot(pids):
    return {name: memory(pid) for name, pid in pids.items()}


class Sampler(threading.Thread):
    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids, self.peak, self.peak_total, self.stop = pids, {n: 0 for n in pids}, 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            now = snapshot(self.pids)
            for name, (rss, _) in now.items():
                self.peak[name] = max(self.peak[name], rss)
            self.peak_total = max(self.peak_total, sum(pss for _, pss in now.values()))
            time.sleep(0.05)


def generate(fluxbuild, url, out, args):
    started = time.monotonic()
    result = subprocess.run([fluxbuild, "--json", "generate", "--server", url, "--out", out] + args, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"bench-memory: generate {' '.join(args)} failed: {result.stderr.strip()}")
    return time.monotonic() - started


def main():
    url, server_pid, repo, fluxbuild, out_dir, request = sys.argv[1:7]
    server_pid, repo = int(server_pid), os.path.realpath(repo)
    pids = children(server_pid, repo)
    generate(fluxbuild, url, os.path.join(out_dir, "warm.png"), ["--prompt", "warm up", "--height", "256", "--width", "256", "--steps", "1", "--seed", "1"])
    time.sleep(2)
    before = snapshot(pids)
    sampler = Sampler(pids)
    sampler.start()
    seconds = generate(fluxbuild, url, os.path.join(out_dir, "large.png"), request.split())
    sampler.stop.set()
    sampler.join()
    time.sleep(3)
    after = snapshot(pids)
    print(
        json.dumps(
            dict(
                request=request,
                seconds=seconds,
                processes={
                    name: dict(before=before[name][0], peak=sampler.peak[name], after=after[name][0]) for name in pids
                },
                total_pss=dict(before=sum(p for _, p in before.values()), peak=sampler.peak_total, after=sum(p for _, p in after.values())),
            )
        )
    )


if __name__ == "__main__":
    main()
