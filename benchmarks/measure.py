"""Running one benchmark subprocess and measuring it: wall time, the memory of its whole
process tree (sampled from /proc) and the CPU used by it and by everything else on the machine.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


# -- /proc sampling ------------------------------------------------------------------------------
def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants, recursively (by parent pid, from /proc): for Ray also
    gcs_server, raylet and the workers raylet starts."""
    kids, out, todo = _children_map(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _status_kb(pid: int) -> dict[str, int] | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        if line.startswith((b"VmRSS:", b"RssAnon:", b"RssFile:", b"RssShmem:")):
            key, value = line.split(b":", 1)
            out[key.decode()] = int(value.split()[0])
    return out if "VmRSS" in out else None


def _label(pid: int) -> tuple[str, int] | None:
    """(what the process is, its start time in clock ticks) from /proc: the program's name, or
    Ray's process title ("ray::ClientActor"); the start time tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        with open(f"/proc/{pid}/stat", "rb") as f:
            start = int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None
    first = argv[0].decode(errors="replace").split(" ")[0] if argv and argv[0] else "?"
    if first.startswith("ray::"):
        return first, start
    name = os.path.basename(first)
    if name.startswith("python"):  # which script: Ray runs several Python daemons
        rest = [a.decode(errors="replace") for a in argv[1:] if a]
        for i, arg in enumerate(rest):
            if arg in ("-m", "-c"):
                name += f" {arg} {rest[i + 1] if arg == '-m' and i + 1 < len(rest) else ''}"
                break
            if not arg.startswith("-"):
                name += " " + os.path.basename(arg)
                break
    return name.strip(), start


def _cpu_ticks(pid: int) -> int | None:
    """User + system clock ticks the process has used so far."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return None


def _pss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class TreeSampler(threading.Thread):
    """Samples the memory of a process tree until stopped.

    Every `interval` s: VmRSS / RssAnon / RssFile / RssShmem of every process in the tree
    (from /proc/PID/status, microseconds per process). Every `pss_interval` s (None: never):
    PSS from /proc/PID/smaps_rollup. The tree is re-listed every `tree_interval` s.
    """

    def __init__(
        self,
        pid: int,
        interval: float = 0.05,
        pss_interval: float | None = None,
        tree_interval: float = 0.25,
    ) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.pss_interval = pss_interval
        self.tree_interval = tree_interval
        self._halt = threading.Event()
        self.peak_rss_kb = 0
        self.peak_unique_kb = 0  # sum of anonymous RSS + largest file RSS + largest shmem RSS
        self.peak_pss_kb = 0
        self.max_processes = 0
        # every pid of the tree ever seen, with its name and start time (pool restarts show
        # here, and which processes were counted: python, gcs_server, raylet, ray::...)
        self.seen: dict[int, tuple[str, int]] = {}
        # the CPU ticks each last had: Ray's daemons are not all reaped by the process we
        # wait for, so rusage alone would miss their CPU time
        self.ticks: dict[int, int] = {}
        self.samples = 0
        self.pss_samples = 0

    def run(self) -> None:
        pids: list[int] = [self.pid]
        next_tree = next_pss = time.perf_counter()
        while True:
            now = time.perf_counter()
            if now >= next_tree:
                pids = process_tree(self.pid)
                for p in pids:
                    # re-read: exec and Ray's set-proctitle rename processes after start;
                    # an exiting process (zombie) has no command line left: keep its name
                    label = _label(p)
                    if label is not None and (label[0] != "?" or p not in self.seen):
                        self.seen[p] = label
                    if (ticks := _cpu_ticks(p)) is not None:
                        self.ticks[p] = ticks
                next_tree = now + self.tree_interval
            stats = [s for s in map(_status_kb, pids) if s is not None]
            if stats:
                self.samples += 1
                self.max_processes = max(self.max_processes, len(stats))
                self.peak_rss_kb = max(self.peak_rss_kb, sum(s["VmRSS"] for s in stats))
                unique = sum(s.get("RssAnon", 0) for s in stats)
                unique += max(s.get("RssFile", 0) for s in stats)
                unique += max(s.get("RssShmem", 0) for s in stats)
                self.peak_unique_kb = max(self.peak_unique_kb, unique)
            if self.pss_interval is not None and now >= next_pss:
                values = [v for v in map(_pss_kb, pids) if v is not None]
                if values:
                    self.pss_samples += 1
                    self.peak_pss_kb = max(self.peak_pss_kb, sum(values))
                next_pss = now + self.pss_interval
            if self._halt.wait(self.interval):
                return

    def stop(self) -> dict[str, Any]:
        """Stop sampling (after the root exited); peaks, and the tree's processes still alive
        (a runtime that outlived its driver, e.g. Ray daemons not shut down)."""
        self._halt.set()
        self.join()
        names: dict[str, int] = {}
        cpu: dict[str, float] = {}  # where the tree's CPU went, by process name
        hz = os.sysconf("SC_CLK_TCK")
        for pid, (name, _) in self.seen.items():
            names[name] = names.get(name, 0) + 1
            cpu[name] = cpu.get(name, 0.0) + self.ticks.get(pid, 0) / hz

        def alive(p: int) -> bool:
            """Still running: same start time, and not a zombie (an orphan that exited and
            waits for init to reap it, which is not a process left running)."""
            try:
                with open(f"/proc/{p}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                return fields[0] not in (b"Z", b"X") and int(fields[19]) == self.seen[p][1]
            except (OSError, ValueError, IndexError):
                return False

        leftover = [p for p in self.seen if p != self.pid and alive(p)]
        if leftover:  # a runtime may still be shutting down the moment its driver exits
            time.sleep(1.0)
            leftover = [p for p in leftover if alive(p)]
        return {
            "peak_rss_sum_mb": self.peak_rss_kb / 1024,
            "peak_unique_est_mb": self.peak_unique_kb / 1024,
            "peak_pss_mb": self.peak_pss_kb / 1024 if self.pss_samples else None,
            "max_processes": self.max_processes,
            "distinct_processes": len(self.seen),
            "process_names": dict(sorted(names.items())),
            "leftover_processes": [f"{p} {self.seen[p][0]}" for p in leftover],
            "tree_cpu_sampled_s": sum(self.ticks.values()) / hz,
            "cpu_s_by_process": {k: round(v, 2) for k, v in sorted(cpu.items())},
            "samples": self.samples,
            "pss_samples": self.pss_samples,
        }


# -- running one subprocess ----------------------------------------------------------------------
#: `unshare -n` runs the command in a new network namespace with only loopback up: Ray (which
#: otherwise binds the machine's outward address) then listens on 127.0.0.1 alone. `exec`
#: keeps the command's pid the one launched, so the measured tree is the command's own.
LOOPBACK_NETNS = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


def loopback_netns_available() -> bool:
    """Whether LOOPBACK_NETNS works here (root, or a user allowed to unshare, and `ip`)."""
    if not (shutil.which("unshare") and shutil.which("ip")):
        return False
    try:
        done = subprocess.run(LOOPBACK_NETNS + ["true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@dataclass
class Proc:
    rc: int
    wall: float
    stdout: str
    stderr_lines: list[tuple[float, str]]  # (seconds since launch, line)
    memory: dict[str, Any]
    rusage: dict[str, float]
    launched_at: float  # time.time() at launch
    pid: int = 0  # the root of the measured tree


def cpu_busy_seconds() -> float | None:
    """Busy CPU seconds of the whole machine since boot (all cores, from /proc/stat)."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    guest = sum(fields[8:10]) if len(fields) > 9 else 0  # already counted in user/nice
    return (sum(fields) - idle - guest) / os.sysconf("SC_CLK_TCK")


def run_measured(
    cmd: list[str], cwd: Path, env: dict[str, str], pss_interval: float | None, timeout: float
) -> Proc:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_before = cpu_busy_seconds()
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    launched_at = time.time()
    t0 = time.perf_counter()
    p = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    sampler = TreeSampler(p.pid, pss_interval=pss_interval)
    sampler.start()
    lines: list[tuple[float, str]] = []
    out: list[str] = []

    def read_err() -> None:
        assert p.stderr is not None
        for line in p.stderr:
            lines.append((time.perf_counter() - t0, line.rstrip("\n")))

    def read_out() -> None:
        assert p.stdout is not None
        out.append(p.stdout.read())

    readers = [
        threading.Thread(target=read_err, daemon=True),
        threading.Thread(target=read_out, daemon=True),
    ]
    for r in readers:
        r.start()
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        rc = p.wait()
        lines.append((time.perf_counter() - t0, f"[benchmark] killed after {timeout:.0f} s"))
    wall = time.perf_counter() - t0
    memory = sampler.stop()
    for r in readers:
        r.join(timeout=5)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    busy_after = cpu_busy_seconds()
    rusage: dict[str, float] = {
        "user_s": after.ru_utime - before.ru_utime,
        "sys_s": after.ru_stime - before.ru_stime,
        "minflt": after.ru_minflt - before.ru_minflt,
        "majflt": after.ru_majflt - before.ru_majflt,
        "harness_cpu_s": (
            self_after.ru_utime - self_before.ru_utime + self_after.ru_stime - self_before.ru_stime
        ),
    }
    if busy_before is not None and busy_after is not None:
        # CPU used by anything else on the machine during the run: a noise indicator. The
        # tree's own CPU is the larger of rusage (reaped descendants) and the per-process
        # ticks sampled every 250 ms (also processes reaped by someone else, e.g. Ray's)
        tree_cpu = max(rusage["user_s"] + rusage["sys_s"], memory["tree_cpu_sampled_s"])
        rusage["foreign_cpu_s"] = max(
            0.0, busy_after - busy_before - tree_cpu - rusage["harness_cpu_s"]
        )
        rusage["foreign_cpu_share"] = rusage["foreign_cpu_s"] / (wall * (os.cpu_count() or 1))
    return Proc(rc, wall, "".join(out), lines, memory, rusage, launched_at, p.pid)
