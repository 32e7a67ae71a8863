"""Ray on loopback only, for the tests: a network namespace of our own, and a local cluster
of a head and worker nodes inside it.

On a machine with an outward address Ray binds that address by itself (and a cluster's
nodes would be reachable from outside); inside a fresh network namespace the only interface
is loopback, so every Ray process of a test binds 127.0.0.1 and nothing else can reach it.
A long-lived holder process keeps the namespace; every command of a test enters it with
`nsenter`, so one cluster serves several tests.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil
import pytest

from tests.tiny_configs import TWO_ROUNDS

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

#: The tiny experiment of the Ray tests (a round takes well under a second on 2 cores).
TINY_RAY_SETS = [*TWO_ROUNDS, "train.batch_size=25"]


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return False
    try:
        done = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="ray is not installed (pip install '.[ray]')"
)
needs_namespace = pytest.mark.skipif(
    not _namespaces_work(),
    reason="needs `unshare -n` and `nsenter` (root): Ray must run on loopback only",
)


def ray_env(**extra: str) -> dict[str, str]:
    """The environment of a Ray test process: this venv first on PATH, the checkout
    importable, Ray's token authentication on for every node (a joining node must agree with
    the head), no usage reporting."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # a lost node is noticed within ~2 s instead of Ray's default ~30 s
    env["RAY_health_check_period_ms"] = "500"
    env["RAY_health_check_failure_threshold"] = "4"
    env.update(extra)
    return env


class Namespace:
    """A network namespace with loopback up, held by a sleeping process until `close()`."""

    def __init__(self) -> None:
        # Ray's temp folder (RAY_TMPDIR) for everything run in here, removed by `close()`:
        # `ray start` records its cluster in RAY_TMPDIR/ray/ray_current_cluster, which a later
        # `ray.init()` on this machine (a user's, Flower's) would try to join, dead or not
        self.temp = tempfile.mkdtemp(prefix="bfns", dir="/tmp")  # short: Ray's socket paths
        self.holder = subprocess.Popen(
            ["unshare", "-n", "sh", "-c", "ip link set lo up && exec sleep 100000"],
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not self._lo_up():
            assert time.monotonic() < deadline, "the namespace's loopback did not come up"
            time.sleep(0.05)

    def _lo_up(self) -> bool:
        done = subprocess.run(self.enter(["ip", "link", "show", "lo"]), capture_output=True)
        return b"UP" in done.stdout.split(b">")[0]

    def enter(self, args: Sequence[str]) -> list[str]:
        """`args` as a command that runs inside this namespace."""
        return ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", "--", *args]

    def run(
        self, args: Sequence[str], cwd: Path | None = None, timeout: float = 240, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.enter(args),
            cwd=cwd,
            env=ray_env(**{"RAY_TMPDIR": self.temp, **env}),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def popen(self, args: Sequence[str], cwd: Path | None = None, **env: str) -> subprocess.Popen:
        return subprocess.Popen(
            self.enter(args),
            cwd=cwd,
            env=ray_env(**{"RAY_TMPDIR": self.temp, **env}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()
        shutil.rmtree(self.temp, ignore_errors=True)


class LocalCluster:
    """A Ray cluster on loopback: a head with no CPUs (so client actors can run only on the
    worker nodes) and `workers` worker nodes of `cpus` CPUs, all in one namespace.

    Its processes are found by the temporary folder in their command lines, and killed by
    `close()` even when a test failed half-way.
    """

    PORT = 6390

    def __init__(self, namespace: Namespace, workers: int = 2, cpus: int = 2) -> None:
        self.ns = namespace
        self.cpus = cpus
        # short: Ray's socket paths below it must stay under 108 characters
        self.temp = tempfile.mkdtemp(prefix="bfray", dir="/tmp")
        self.address = f"127.0.0.1:{self.PORT}"
        self._ray(
            "start", "--head", f"--port={self.PORT}", "--num-cpus=0",
            "--node-ip-address=127.0.0.1", f"--temp-dir={self.temp}",
            "--include-dashboard=false", "--disable-usage-stats",
        )  # fmt: skip
        for _ in range(workers):
            self.add_worker()

    def _ray(self, *args: str) -> None:
        done = self.ns.run([str(BIN / "ray"), *args], timeout=120)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    def add_worker(self, **env: str) -> None:
        """One more worker node; `env`: variables its processes (and so its actors) see."""
        done = self.ns.run(
            [
                str(BIN / "ray"), "start", f"--address={self.address}",
                f"--num-cpus={self.cpus}", "--node-ip-address=127.0.0.1",
                "--disable-usage-stats",
            ],
            timeout=120,
            **env,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    def processes(self) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if any(self.temp in part for part in proc.info["cmdline"] or ()):
                    found.append(proc)
        return found

    def worker_raylets(self) -> list[psutil.Process]:
        """The raylets of the worker nodes (not the head's)."""
        return [
            p
            for p in self.processes()
            if "raylet" in p.name() and "--head" not in " ".join(p.cmdline())
        ]

    def close(self) -> None:
        procs = self.processes()
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(procs, timeout=10)
        shutil.rmtree(self.temp, ignore_errors=True)


@contextlib.contextmanager
def local_cluster(workers: int = 2, cpus: int = 2) -> Iterator[LocalCluster]:
    """A namespace and a cluster in it, both gone after the block."""
    ns = Namespace()
    cluster = None
    try:
        cluster = LocalCluster(ns, workers, cpus)
        yield cluster
    finally:
        if cluster is not None:
            cluster.close()
        ns.close()


def descendants(pid: int) -> list[psutil.Process]:
    """The processes `pid` started, directly or not, each with `info["name"]` read now."""
    found = []
    with contextlib.suppress(psutil.Error):
        for proc in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                proc.info = {"name": proc.name()}  # type: ignore[attr-defined]
                found.append(proc)
    return found


def _runs_actors(pid: int) -> bool:
    """Whether a Ray actor of the client trainer runs among `pid`'s processes (Ray names an
    actor's process after its class once the actor exists: Ray itself is up by then)."""
    for child in descendants(pid):
        with contextlib.suppress(psutil.Error):
            if any("ClientActor" in part for part in child.cmdline()):
                return True
    return False


def interrupt_once_actors_run(
    proc: subprocess.Popen, pid: int
) -> tuple[float, list[psutil.Process], str]:
    """Wait for a round's line on `proc`'s stderr printed while the Ray actors exist (before
    that, Ray itself may still be starting, and the driver trains), send SIGINT to `pid` (the
    blazefl process), and return the seconds it took to exit, the processes it had started,
    and its stderr."""
    assert proc.stderr is not None
    seen = ""
    for line in proc.stderr:
        seen += line
        if line.startswith("round ") and _runs_actors(pid):
            break
    children = descendants(pid)
    start = time.monotonic()
    os.kill(pid, signal.SIGINT)
    rest = proc.stderr.read()
    proc.wait(timeout=60)
    return time.monotonic() - start, children, seen + rest
