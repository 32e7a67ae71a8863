"""Benchmark blazefl against the plain-PyTorch compute floor (benchmarks/reference.py).

Every variant runs as its own subprocess, interleaved and repeated (the order rotates every
repeat), on the same data and config:

    ref-1            reference loop, 1 process
    ref-2            reference loop, 2 persistent worker processes
    sequential       blazefl run --mode sequential
    threads-1        blazefl run --mode threads --workers 1
    threads-2        blazefl run --mode threads --workers 2
    processes-2-shm  blazefl run --mode processes --workers 2 --ipc shared_memory
    processes-2-sto  blazefl run --mode processes --workers 2 --ipc storage
    ray-2            blazefl run --mode ray --workers 2 (embedded local Ray runtime)   [W]
    flower-2         Flower's Ray-based simulation (benchmarks/flower_sim.py)          [W]

The variants that start Ray run in a network namespace with only loopback (``--ray-netns``),
with RAY_USAGE_STATS_ENABLED=0 and FLWR_TELEMETRY_ENABLED=0, and RAY_ADDRESS unset (ray-2
starts its own local runtime, never joins a cluster).

Measured per run (definitions are also written into the JSON):

- wall: whole-process wall time of the subprocess, launch to exit (start-up, data generation,
  blazefl's prepare/partition/init stages, all rounds, report, interpreter exit).
- steady round: mean seconds of rounds 2+. blazefl: ``round_seconds`` from
  ``RUN/timings/round-NNNN.json`` (client training + aggregation + server evaluation on the
  test set); reference: the same work timed by the reference itself. ray-2: rounds 2+ in
  which the driver trained no client (``driver_clients`` 0: the driver trains while Ray's
  actors start, so such a round is still start-up).
- round incl. artifacts (blazefl): the whole period of a round, compute + serialising and
  hashing the snapshot + committing it (+ metrics and timings files): the time between the
  mtimes of consecutive ``RUN/timings/round-NNNN.json`` files, rounds 2+.
- write share: (round incl. artifacts - round_seconds) / round incl. artifacts, i.e. the share of
  the round spent producing and committing its artifacts, rounds 2+. The framework's own
  ``write_seconds / (round_seconds + write_seconds)`` is kept in the JSON as
  ``write_share_timings`` (it does not include serialisation and hashing done before commit).
- start-up: launch to the start of round 1. blazefl: the time the first progress line appeared
  minus the seconds it reports; includes interpreter + imports, prepare (synthetic data ->
  zarr), partition, init and building the session/trainer (a process pool starts lazily, inside
  round 1). ``start-up (prepared)`` measures the same on a run directory whose dataset,
  partitions and round 0 already exist (``blazefl stage prepare/partition/init`` done before),
  so it is imports + loading the stores + session set-up only; the start-up target is checked
  on that. Reference: process start to round 1 (imports, data generation, pool start, building
  its model and optimizer). blazefl builds its workers (and starts a process pool) lazily,
  inside round 1, so that cost shows in the ``round 1`` column, not in start-up.
- round 1: seconds of round 1 (blazefl: incl. its artifacts), to show one-off costs.
- peak RSS-sum: the largest sum of VmRSS over the subprocess and all its descendants
  (recursively: for Ray, gcs_server, raylet and its workers too), sampled every 50 ms from
  /proc (cheap); the names of the processes counted are in the JSON (``process_names``).
  Shared pages (torch's libraries, shared-memory tensors) count once per process, so
  multi-process trees are over-counted.
- peak PSS: the largest sum of PSS over the tree (shared pages split between the processes that
  map them), read from /proc/PID/smaps_rollup every 100 ms. Reading smaps_rollup walks the page
  tables (~10 ms per GB of RSS), too costly for timed runs on 2 cores, so by default PSS comes
  from one extra, untimed memory pass per multi-process variant (``--pss pass``); ``--pss
  inline`` samples it during the timed runs instead (quick mode), ``--pss off`` skips it. For a
  single process PSS differs from RSS only by pages shared with unrelated processes on the
  machine, so single-process variants report their RSS in the PSS column.
- CPU: user and system seconds and minor page faults of the whole tree (rusage of waited-for
  children), and ``foreign_cpu_share``: CPU time used by other processes on the machine during
  the run (from /proc/stat) as a share of wall x cores; the report warns above 5 %.

Usage:
    python -m benchmarks.run                       # workload W, 3 repeats
    python -m benchmarks.run --workload resnet18
    python -m benchmarks.run --workload clients1000
    python -m benchmarks.run --workload shape      # the original benchmark's shape, scaled
    python -m benchmarks.run --quick               # smoke test, well under a minute per workload

Results: benchmarks/results/<workload>.md and .json (``<workload>-quick.*`` with --quick).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.args import find_flower_python, parse_args, ray_install, ray_version
from benchmarks.measure import LOOPBACK_NETNS, Proc, loopback_netns_available, run_measured
from benchmarks.report import (
    ROOT,
    check_targets,
    machine_info,
    render_markdown,
    stat,
    summarize,
    update_readme,
)
from benchmarks.run_parse import PROGRESS, floor_flags, mean, mode_args, parse_blazefl
from benchmarks.workloads import Variant, Workload, apply_quick, workloads


# -- running the variants ----------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace, wl: Workload) -> None:
        self.args = args
        self.wl = wl
        self.workdir = Path(tempfile.mkdtemp(prefix="blazefl-bench-", dir=args.workdir))
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT)] + ([self.env["PYTHONPATH"]] if self.env.get("PYTHONPATH") else [])
        )
        self.env.pop("BLAZEFL_TEST_PERTURB_UPLINK", None)
        self.env.pop("RAY_ADDRESS", None)  # ray-2 is the embedded runtime, never a cluster
        self.env["RAY_USAGE_STATS_ENABLED"] = "0"
        # Ray's sessions in the scratch folder: a `ray_current_cluster` that an earlier `ray
        # start` left in /tmp/ray makes `ray.init()` without an address (Flower's) join that
        # cluster, dead or not, and wait there; and they go away with the scratch folder
        self.env["RAY_TMPDIR"] = str(self.workdir)
        self.env["FLWR_TELEMETRY_ENABLED"] = "0"
        self.flower_python = sys.executable  # set by bench_workload when flower-2 runs
        self.netns = False  # run Ray variants on loopback only (set by bench_workload)
        script = Path(sys.executable).parent / "blazefl"
        self.blazefl = (
            [str(script)] if script.exists() else [sys.executable, "-m", "blazefl.pipeline.cli"]
        )
        self.counter = 0
        self.timeout = args.timeout
        self._stores: dict[str, tuple[Path, Path]] = {}

    # -- config files --
    def write_config(self, cfg: dict[str, Any]) -> Path:
        tree: dict[str, Any] = {}
        for dotted, value in cfg.items():
            node = tree
            *parents, leaf = dotted.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        self.counter += 1
        path = self.workdir / f"params-{self.counter}.yaml"
        path.write_text(yaml.safe_dump(tree, sort_keys=False))
        return path

    # -- one run --
    def run_variant(self, v: Variant, pss_interval: float | None) -> dict[str, Any]:
        cfg = v.config(self.wl.config)
        if v.kind == "ref":
            return self._run_script(v, cfg, pss_interval, sys.executable, "benchmarks.reference")
        if v.kind == "flower":
            return self._run_script(
                v, cfg, pss_interval, self.flower_python, "benchmarks.flower_sim"
            )
        return self._run_blazefl(v, cfg, pss_interval)

    def _measure(self, v: Variant, cmd: list[str], pss: float | None) -> Proc:
        if v.uses_ray and self.netns:
            cmd = LOOPBACK_NETNS + cmd
        return run_measured(cmd, self.workdir, self.env, pss, self.timeout)

    def _run_script(
        self, v: Variant, cfg: dict[str, Any], pss: float | None, python: str, module: str
    ) -> dict[str, Any]:
        """The reference or Flower's simulation: both print the same JSON shape."""
        out = self.workdir / f"{v.kind}-{self.counter}.json"
        self.counter += 1
        cmd = [python, "-m", module, *floor_flags(cfg, v), "--json", str(out)]
        p = self._measure(v, cmd, pss)
        rec = self._base_record(v, p)
        if p.rc != 0 or not out.exists():
            return self._failed(rec, p)
        data = json.loads(out.read_text())
        out.unlink()
        rounds = data["rounds"]
        rec.update(
            {
                "round_seconds": [r["seconds"] for r in rounds],
                "steady_round_s": mean([r["seconds"] for r in rounds[1:]]),
                "steady_total_s": mean([r["seconds"] for r in rounds[1:]]),
                "startup_s": data["startup_seconds"],
                "round1_s": rounds[0]["seconds"] if rounds else None,
                "self_reported_wall_s": data["wall_seconds"],
                "self_reported_peak_rss_sum_mb": data.get("peak_rss_sum_mb"),
                "pool_start_s": data.get("pool_seconds"),
                "final_metrics": data["final_metrics"],
                "malloc_tuned": data["malloc_tuned"],
            }
        )
        for key in ("flwr", "ray", "simulation_seconds"):
            if key in data:
                rec[key] = data[key]
        return rec

    def _run_blazefl(self, v: Variant, cfg: dict[str, Any], pss: float | None) -> dict[str, Any]:
        params = self.write_config(cfg)
        run_dir = self.workdir / f"run-{self.counter}"
        cmd = self.blazefl + ["run", "--config", str(params), "--out", str(run_dir)]
        cmd += mode_args(v)
        p = self._measure(v, cmd, pss)
        rec = self._base_record(v, p)
        try:
            if p.rc != 0:
                return self._failed(rec, p)
            rec.update(parse_blazefl(run_dir, p, cfg["fl.rounds"]))
        finally:
            if not self.args.keep:
                shutil.rmtree(run_dir, ignore_errors=True)
        return rec

    def _base_record(self, v: Variant, p: Proc) -> dict[str, Any]:
        return {"variant": v.name, "rc": p.rc, "wall_s": p.wall, **p.memory, **p.rusage}

    def _failed(self, rec: dict[str, Any], p: Proc) -> dict[str, Any]:
        tail = [line for _, line in p.stderr_lines][-15:]
        rec["error"] = "\n".join(tail) or p.stdout[-2000:]
        print(
            f"  !! {rec['variant']} failed (rc {p.rc}):\n    " + "\n    ".join(tail),
            file=sys.stderr,
        )
        return rec

    # -- start-up measurements --
    def help_time(self) -> float:
        t0 = time.perf_counter()
        subprocess.run(
            self.blazefl + ["run", "--help"],
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
        )
        return time.perf_counter() - t0

    def prepare_stores(self, v: Variant) -> tuple[Path, Path]:
        """dataset, partitions and round 0 for the variant's config (`blazefl run` with 0
        rounds runs exactly prepare, partition, init and report); cached per config."""
        cfg = v.config(self.wl.config)
        key = json.dumps(cfg, sort_keys=True)
        if key in self._stores:
            return self._stores[key]
        params = self.write_config(cfg)
        base = self.workdir / f"prepared-{len(self._stores)}"
        cmd = self.blazefl + ["run", "--config", str(params), "--out", str(base)]
        subprocess.run(
            cmd + ["--set", "fl.rounds=0", "--quiet"],
            cwd=self.workdir,
            env=self.env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._stores[key] = (base, params)
        return base, params

    def prepared_startup(self, v: Variant, base: Path, params: Path) -> dict[str, Any]:
        run_dir = self.workdir / f"warm-{self.counter}"
        self.counter += 1
        shutil.copytree(base, run_dir)
        cmd = self.blazefl + ["run", "--config", str(params), "--out", str(run_dir)]
        cmd += ["--set", "fl.rounds=1", *mode_args(v)]
        p = run_measured(cmd, self.workdir, self.env, None, self.timeout)
        shutil.rmtree(run_dir, ignore_errors=True)
        rec = {"variant": v.name, "rc": p.rc, "wall_s": p.wall}
        for at, line in p.stderr_lines:
            m = PROGRESS.match(line)
            if m and m.group(1) == "1":
                rec["startup_s"] = at - float(m.group(3))
                rec["round1_s"] = float(m.group(3))
        if p.rc != 0 or "startup_s" not in rec:
            self._failed(rec, p)
        return rec

    def close(self) -> None:
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def _ray_setup(
    args: argparse.Namespace, variants: list[Variant], bench: Bench
) -> tuple[list[Variant], dict[str, Any]]:
    """Find Ray (ray-2) and Flower's interpreter (flower-2), decide on the loopback network
    namespace. A variant asked for by name that cannot run is one line (SystemExit); one that
    is only in the default list is skipped with a line saying how to get it."""
    info: dict[str, Any] = {}

    def drop(kind: str, why: str) -> None:
        nonlocal variants
        if args.variants:
            raise SystemExit(why)
        log(f"skipping: {why}")
        variants = [v for v in variants if not (v.uses_ray and (v.kind == kind))]

    if any(v.uses_ray and v.kind == "blazefl" for v in variants):
        info["blazefl_ray"] = ray_version()
        info["blazefl_ray_install"] = ray_install(sys.executable)
        if info["blazefl_ray"] is None:
            drop("blazefl", "ray-2: Ray is not installed here; pip install -e '.[ray]'")
    if any(v.kind == "flower" for v in variants):
        python, what = find_flower_python(args.flower_python)
        if python is None:
            drop("flower", what)
        else:
            bench.flower_python = python
            info["flower_python"], info["flower"] = python, what
            info["flower_ray_install"] = ray_install(python)
    if any(v.uses_ray for v in variants) and args.ray_netns != "off":
        bench.netns = loopback_netns_available()
        if not bench.netns:
            if args.ray_netns == "on":
                raise SystemExit("--ray-netns on: `unshare -n` does not work here (needs root)")
            log("warning: cannot unshare a network namespace: Ray binds this machine's address")
    info["loopback_netns"] = bench.netns
    return variants, info


def bench_workload(args: argparse.Namespace, wl: Workload) -> dict[str, Any]:
    if args.quick:
        wl = apply_quick(wl)
    variants = wl.variants
    if args.variants:
        keep = set(args.variants.split(","))
        unknown = keep - {v.name for v in variants}
        if unknown:
            raise SystemExit(
                f"unknown variants {sorted(unknown)}; have {[v.name for v in variants]}"
            )
        variants = [v for v in variants if v.name in keep]
    bench = Bench(args, wl)
    variants, ray_info = _ray_setup(args, variants, bench)
    started = _dt.datetime.now(_dt.UTC)
    load_before = loadavg()
    runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
    startup: dict[str, Any] = {"help_runs": [], "prepared_runs": {}}
    pss_inline = 0.1 if args.pss == "inline" else None
    try:
        warm = [v for name in wl.prepared_startup for v in variants if v.name == name]
        if args.quick:
            warm = warm[:1]
        stores = {v.name: bench.prepare_stores(v) for v in warm}
        log(
            f"== workload {wl.name}: {len(variants)} variants x {args.repeats} repeats "
            f"(scratch {bench.workdir})"
        )
        for rep in range(args.repeats):
            order = variants[rep % len(variants) :] + variants[: rep % len(variants)]
            for v in order:
                t0 = time.perf_counter()
                rec = bench.run_variant(v, pss_inline)
                rec["repeat"] = rep
                runs[v.name].append(rec)
                log(
                    f"  [{rep + 1}/{args.repeats}] {v.name:<22} wall {rec['wall_s']:7.2f}s  "
                    f"steady {rec.get('steady_round_s') or float('nan'):7.3f}s  "
                    f"rss {rec['peak_rss_sum_mb']:6.0f}MB  "
                    f"other load {100 * rec.get('foreign_cpu_share', 0):4.1f}%  "
                    f"({time.perf_counter() - t0:.0f}s)"
                )
            startup["help_runs"].extend(bench.help_time() for _ in range(3))
            for v in warm:
                r = bench.prepared_startup(v, *stores[v.name])
                startup["prepared_runs"].setdefault(v.name, []).append(r)
                log(
                    f"  [{rep + 1}/{args.repeats}] start-up (prepared) {v.name}: "
                    f"{r.get('startup_s', float('nan')):.2f}s"
                )
        memory: dict[str, dict[str, Any]] = {}
        if args.pss == "pass":
            log("== memory pass (PSS, untimed)")
            for v in [v for v in variants if v.multiprocess]:
                rec = bench.run_variant(v, 0.1)
                memory[v.name] = {
                    k: rec.get(k)
                    for k in (
                        "peak_pss_mb",
                        "peak_rss_sum_mb",
                        "peak_unique_est_mb",
                        "max_processes",
                        "process_names",
                        "leftover_processes",
                        "pss_samples",
                        "rc",
                    )
                }
                log(
                    f"  {v.name:<22} pss {rec.get('peak_pss_mb') or float('nan'):6.0f}MB  "
                    f"rss-sum {rec['peak_rss_sum_mb']:6.0f}MB"
                )
    finally:
        bench.close()
    startup["help"] = stat(startup["help_runs"])
    startup["prepared"] = {
        name: stat([r.get("startup_s") for r in rs if r.get("rc") == 0])
        for name, rs in startup["prepared_runs"].items()
    }
    summary = summarize(runs, memory, variants)
    targets = check_targets(wl, summary, startup)
    finished = _dt.datetime.now(_dt.UTC)
    result = {
        "workload": wl.name,
        "description": wl.description,
        "quick": args.quick,
        "config": wl.config,
        "variants": [
            {
                "name": v.name,
                "kind": v.kind,
                "mode": v.mode,
                "workers": v.workers,
                "ipc": v.ipc,
                "overrides": dict(v.overrides),
                "reference": v.reference,
                "versus": v.versus,
            }
            for v in variants
        ],
        "repeats": args.repeats,
        "pss_mode": args.pss,
        "ray": ray_info,
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "machine": machine_info(),
        "definitions": __doc__.split(
            "Measured per run (definitions are also written into the JSON):", 1
        )[-1]
        .split("Usage:")[0]
        .strip(),
        "summary": summary,
        "startup": startup,
        "memory_pass": memory,
        "targets": targets,
        "runs": runs,
    }
    result["markdown"] = render_markdown(result, variants)
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    names = list(workloads()) if args.workload == "all" else [args.workload]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        result = bench_workload(args, workloads()[name])
        stem = name + (f"-{args.label}" if args.label else "") + ("-quick" if args.quick else "")
        (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
        (out_dir / f"{stem}.md").write_text(result["markdown"])
        print(result["markdown"])
        log(f"wrote {out_dir / (stem + '.md')} and {out_dir / (stem + '.json')}")
        if args.readme and not args.quick and not args.label:
            if update_readme(Path(args.readme), name, result["markdown"]):
                log(f"updated {args.readme}")
            else:
                log(f"{args.readme} has no benchmark:{name} markers; not updated")


if __name__ == "__main__":
    main()
