#!/usr/bin/env python3
"""Runs a command and reports its memory as one JSON line on stderr's last line (or --out FILE):
peak RSS (the kernel's high-water mark, what /usr/bin/time calls max resident), and peaks of the
two parts of RSS sampled every 50 ms from /proc/PID/status: RssAnon (heap: what must fit in RAM)
and RssFile (file pages the process has mapped and touched, e.g. a memory-mapped weights file:
the kernel drops those under pressure and reads them again).

    peak_memory.py --out FILE -- COMMAND ARGS...
"""
import json
import os
import subprocess
import sys
import threading
import time


def status_kib(pid):
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile", "RssShmem", "VmRSS"):
                    fields[key] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return fields


def main():
    args = sys.argv[1:]
    if len(args) < 4 or args[0] != "--out" or args[2] != "--":
        sys.exit("usage: peak_memory.py --out FILE -- COMMAND ARGS...")
    out, command = args[1], args[3:]
    started = time.monotonic()
    child = subprocess.Popen(command)
    peaks = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            for key, value in status_kib(child.pid).items():
                if key in peaks:
                    peaks[key] = max(peaks[key], value)
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(child.pid, 0)
    done.set()
    sampler.join()
    child.returncode = os.waitstatus_to_exitcode(status)
    report = {
        "exit": child.returncode,
        "wall_s": round(time.monotonic() - started, 2),
        "user_s": round(usage.ru_utime, 2),
        "sys_s": round(usage.ru_stime, 2),
        "peak_rss_kib": usage.ru_maxrss,
        "peak_anon_kib": peaks["RssAnon"],
        "peak_file_kib": peaks["RssFile"],
    }
    with open(out, "w") as f:
        json.dump(report, f)
        f.write("\n")
    sys.exit(child.returncode)


if __name__ == "__main__":
    main()
