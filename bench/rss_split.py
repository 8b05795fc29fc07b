#!/usr/bin/env python3
"""Where a command's peak RSS lies: anonymous memory or mapped file pages, per process of its tree.

    python bench/rss_split.py [--out FILE] [--label NAME] -- COMMAND ...

ru_maxrss (what `jlcm-gguf convert` and bench/llama7b.py report) counts the pages of
memory-mapped files a process has touched as well as the memory it allocated, and a
parent's RUSAGE_CHILDREN reports the largest descendant's. The first kind is the
page cache, which the kernel takes back under pressure; the second is what a machine
must have. This samples /proc/PID/status (RssAnon, RssFile) of the command and every
descendant every 0.2 s and records each one's peaks. With --out, the result is merged
as a row into that JSON file (bench/results/rss_split.json).
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jlcm_gguf import scoreboard  # noqa: E402

FIELDS = ("VmRSS", "RssAnon", "RssFile")


def status(pid: int) -> dict | None:
    """The FIELDS of a process, in bytes; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in FIELDS:
            out[key] = int(value.split()[0]) * 1024
    return out


def command(pid: int) -> str:
    """The first three words of a process's command line ('' once it is gone)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return ""
    return " ".join(a.decode(errors="replace") for a in argv[:3] if a)


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            kids = []
        todo.extend(int(k) for k in kids)
    return found


def watch(cmd: list[str], interval: float = 0.2) -> tuple[int, float, dict[int, dict]]:
    """Run cmd; return (exit status, seconds, peaks by pid)."""
    t0 = time.time()
    proc = subprocess.Popen(cmd)
    peaks: dict[int, dict] = {}
    while proc.poll() is None:
        for pid in descendants(proc.pid):
            s = status(pid)
            if s is None:
                continue
            if pid not in peaks:
                peaks[pid] = {"cmd": command(pid), **{f: 0 for f in FIELDS}}
            p = peaks[pid]
            for f in FIELDS:
                p[f] = max(p[f], s.get(f, 0))
        time.sleep(interval)
    return proc.returncode, time.time() - t0, peaks


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path)
    p.add_argument("--label", default=None, help="the row's name (default: the command)")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        p.error("give the command after --")
    rc, seconds, peaks = watch(cmd)
    gib = 2 ** 30
    for pid, pk in peaks.items():
        print(f"{pid:>8}  RSS {pk['VmRSS'] / gib:6.2f} GiB  anon {pk['RssAnon'] / gib:6.2f}  "
              f"file {pk['RssFile'] / gib:6.2f}  {pk['cmd'][:100]}")
    if args.out:
        row = {"name": args.label or shlex.join(cmd), "command": shlex.join(cmd), "exit_status": rc,
               "seconds": round(seconds, 1),
               "processes": [{"cmd": pk["cmd"], **{f"peak_{f}_bytes": pk[f] for f in FIELDS}}
                             for pk in peaks.values()]}
        header = {"what": __doc__.split("\n")[0], "machine": scoreboard.machine_info(),
                  "commands": ["python bench/rss_split.py " + shlex.join(sys.argv[1:])]}
        scoreboard.merge_rows(args.out, header, [row])
    return rc


if __name__ == "__main__":
    sys.exit(main())
