"""Comparing and listing runs: `blazefl diff` and `blazefl show`.

- `diff_runs` compares two runs round by round: files, tensors (max abs difference), clients,
  config keys; it names the first round that differs.
- `show_run` prints rounds, hashes and metrics in a table.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from blazefl.pipeline.chain import files_of, recorded_code
from blazefl.pipeline.divergence import (
    client_data_differences,
    first_client_difference,
    first_step_difference,
    legacy_rng_difference,
    manifest_causes,
    read_trace,
)
from blazefl.pipeline.verify import (
    Echo,
    _fmt_rounds,
    _ids,
    _open_run,
    _rounds,
    differing_uplinks,
)
from blazefl.stages.artifacts import MANIFEST, ArtifactError, RunDir
from blazefl.stages.manifest_schema import manifest_format
from blazefl.stages.snapshot import CLIENTS, GLOBAL, TRACE

_files = files_of


def _hash(run: RunDir, path: Path) -> str:
    """sha256 of a file of the run, opened as untrusted ("unreadable" if it is unsafe)."""
    try:
        return run.hash_file(run.rel(path))
    except ValueError as exc:
        return f"unreadable ({str(exc)[:60]})"


def _bytes(run: RunDir, path: Path) -> bytes | None:
    try:
        return run.read_file(run.rel(path), 64 << 20)
    except ValueError:
        return None


__all__ = ["diff_runs", "show_run"]


# -- diff ----------------------------------------------------------------------------------
def _tensor_diffs(ra: RunDir, pa: Path, rb: RunDir, pb: Path) -> str:
    """Which tensors of two safetensors files differ, largest max abs difference first."""
    from safetensors.torch import load

    try:
        a, b = load(ra.read_file(ra.rel(pa))), load(rb.read_file(rb.rel(pb)))
    except Exception as exc:  # a damaged file: say so instead of failing the whole diff
        return f"unreadable safetensors ({str(exc).splitlines()[0][:80]})"
    items: list[tuple[float, str]] = []
    for key in sorted(set(a) | set(b)):
        if key not in b or key not in a:
            items.append((float("inf"), f"{key} (only in {'A' if key in a else 'B'})"))
        elif a[key].shape != b[key].shape or a[key].dtype != b[key].dtype:
            items.append(
                (
                    float("inf"),
                    f"{key} ({a[key].dtype}{tuple(a[key].shape)} vs "
                    f"{b[key].dtype}{tuple(b[key].shape)})",
                )
            )
        elif not a[key].equal(b[key]):
            d = (a[key].double() - b[key].double()).abs().max().item()
            items.append((d, f"{key} (max abs diff {d:.3g})"))
    items.sort(key=lambda x: -x[0])
    shown = ", ".join(text for _, text in items[:6])
    more = f", and {len(items) - 6} more" if len(items) > 6 else ""
    return f"{len(items)} of {len(set(a) | set(b))} tensors differ: {shown}{more}"


def _clients_diffs(ra: RunDir, pa: Path, rb: RunDir, pb: Path) -> str:
    """Which clients' data differ between two clients files (their tensors if unreadable)."""
    found = client_data_differences(_bytes(ra, pa), _bytes(rb, pb))
    if found is None:
        return _tensor_diffs(ra, pa, rb, pb)
    shown = ", ".join(f"client {cid}'s {what}" for cid, what in found[:6])
    more = f", and {len(found) - 6} more" if len(found) > 6 else ""
    return f"{shown}{more}"


def _dict_diffs(a: dict[str, Any], b: dict[str, Any]) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return "; ".join(
        f"{k}: {a.get(k, '(absent)')!r} (A) vs {b.get(k, '(absent)')!r} (B)" for k in keys
    )


def _round_diffs(a: RunDir, b: RunDir, t: int, reported: set[str]) -> list[str]:
    """Lines describing how round t differs between two runs (empty: identical)."""
    out = []
    fa, fb = _files(a.round_dir(t)), _files(b.round_dir(t))
    for rel in sorted(set(fa) | set(fb)):
        if rel not in fa or rel not in fb:
            out.append(f"{rel} only in {'A' if rel in fa else 'B'}")
        elif _hash(a, fa[rel]) != _hash(b, fb[rel]):
            if rel == CLIENTS:  # which clients' data, not which of thousands of tensors
                detail = _clients_diffs(a, fa[rel], b, fb[rel])
            elif rel.endswith(".safetensors"):
                detail = _tensor_diffs(a, fa[rel], b, fb[rel])
            else:
                detail = ""
            out.append(f"{rel} differs" + (f": {detail}" if detail else ""))
    ma, mb = a.manifest(t), b.manifest(t)
    # any recorded byte counts: fields not detailed below are named here
    detailed = {"clients", "uplinks", "summary"} | reported
    other = sorted(k for k in set(ma) | set(mb) if k not in detailed and ma.get(k) != mb.get(k))
    if other:
        out.append(f"{MANIFEST} differs in: {', '.join(other)}")
    if ma.get("kind") != mb.get("kind"):
        out.append(f"kind: {ma.get('kind')} (A) vs {mb.get('kind')} (B)")
    if ma.get("clients") != mb.get("clients"):
        out.append(
            f"sampled clients differ: A {_ids(ma.get('clients', []))}; "
            f"B {_ids(mb.get('clients', []))}"
        )
    cids = differing_uplinks(ma, mb)
    if cids:
        out.append(f"uplinks differ for clients {_ids(cids)}")
    if ma.get("summary") != mb.get("summary"):
        sa, sb = ma.get("summary", {}), mb.get("summary", {})
        out.append(f"{MANIFEST} summary: {_dict_diffs(sa, sb)}")
    pa, pb = a.metrics_path(t), b.metrics_path(t)
    if pa.is_file() != pb.is_file():
        out.append(f"{a.rel(pa)} only in {'A' if pa.is_file() else 'B'}")
    elif pa.is_file() and _bytes(a, pa) != _bytes(b, pb):
        out.append(f"{a.rel(pa)} differs: {_dict_diffs(a.read_json(pa), b.read_json(pb))}")
    return out


def diff_runs(run_a: Path, run_b: Path, echo: Echo) -> bool:
    """Compare two runs: config, stores, then round 0, 1, ... (files, tensors, clients, metrics).

    Returns:
        True iff the byte config, the stores, every round and every metrics file are identical
        and both runs hold the same rounds (timings are ignored; they always vary).
    """
    a, b = _open_run(run_a), _open_run(run_b)
    same = True
    reported: set[str] = set()  # manifest fields already named for the whole run
    ca, cb = a.manifest(0).get("config", {}), b.manifest(0).get("config", {})
    if ca != cb:
        echo(f"config differs: {_dict_diffs(ca, cb)}")
        same = False
        reported |= {"config", "config_sha256"}
    ea, eb = a.manifest(0).get("environment", {}), b.manifest(0).get("environment", {})
    if ea != eb:
        echo(
            f"environment differs (bits are only promised for the same one): {_dict_diffs(ea, eb)}"
        )
        same = False  # a recorded byte differs
        reported.add("environment")
    ka, kb = a.manifest(0).get("code", {}), b.manifest(0).get("code", {})
    if ka != kb:
        echo(f"code differs: {_dict_diffs(ka, kb)}")
        same = False
        reported.add("code")
    stores_differ: list[str] = []
    for store in ("dataset", "partitions"):
        ha = {rel: _hash(a, p) for rel, p in _files(a.root / store).items()}
        hb = {rel: _hash(b, p) for rel, p in _files(b.root / store).items()}
        bad = sorted(k for k in set(ha) | set(hb) if ha.get(k) != hb.get(k))
        ma, mb = a.root / store / MANIFEST, b.root / store / MANIFEST
        if _bytes(a, ma) != _bytes(b, mb):
            bad.append(MANIFEST)
        if bad:
            echo(f"{store} differs: {', '.join(bad[:8])}{' ...' if len(bad) > 8 else ''}")
            same = False
        # data differ when the stored samples or partitions do, or the dataset's source files
        # (a store manifest alone also records the user code that made it)
        recorded = a.read_json(ma).get("data_files") != b.read_json(mb).get("data_files")
        if any(k != MANIFEST for k in bad) or (store == "dataset" and bad and recorded):
            stores_differ.append(store)
    ra, rb = set(a.complete_rounds()), set(b.complete_rounds())
    common = sorted(ra & rb)
    differing: list[int] = []
    first_lines: list[str] = []
    for t in common:
        lines = _round_diffs(a, b, t, reported)
        if lines:
            differing.append(t)
            first_lines = first_lines or lines
    if differing:
        t = differing[0]
        before = f" ({_rounds(list(range(t)))} identical)" if t > 0 else ""
        echo(f"first difference: round {t}{before}")
        for line in first_lines:
            echo(f"  {line}")
        # the first round whose training differs: round 0 may differ in its records only
        trained = next((r for r in differing if r > 0 and _outputs_differ(a, b, r)), None)
        for line in explain_round(a, b, t, stores_differ, trained):
            echo(f"  {line}")
    if len(differing) > 1:
        echo(f"later rounds that differ too: {_fmt_rounds(differing[1:])}")
    for name, only in (("A", ra - rb), ("B", rb - ra)):
        if only:
            echo(f"only in {name}: {_rounds(sorted(only))}")
            same = False
    same = same and not differing
    if same:
        echo(f"identical: {len([t for t in common if t > 0])} rounds")
    elif not differing:
        echo(f"common {_rounds(common)}: identical artifacts")
    return same


def _outputs_differ(a: RunDir, b: RunDir, t: int) -> bool:
    """Whether round t's trained outputs differ (not only its records, such as code copies)."""
    oa, ob = a.manifest(t).get("outputs", {}), b.manifest(t).get("outputs", {})
    keys = {k for k in set(oa) | set(ob) if not k.startswith("code/")}
    return any(oa.get(k) != ob.get(k) for k in keys)


def explain_round(
    a: RunDir, b: RunDir, first: int, stores_differ: list[str], trained: int | None = None
) -> list[str]:
    """`where:` and `cause:` lines for two runs: the run-level classes from the manifests of
    the first differing round, then the first differing step of the first round whose
    training differs (`trained`, default `first`), from the rounds' step traces
    (`blazefl.pipeline.divergence`)."""
    ma, mb = a.manifest(first), b.manifest(first)
    out = [f"cause: {line}" for line in manifest_causes(ma, mb, stores_differ)]
    t = first if trained is None else trained
    if t == 0:
        return out
    ma, mb = a.manifest(t), b.manifest(t)
    ta = read_trace(_bytes(a, a.round_dir(t) / TRACE)) if TRACE in ma.get("outputs", {}) else None
    tb = read_trace(_bytes(b, b.round_dir(t) / TRACE)) if TRACE in mb.get("outputs", {}) else None
    if ta is None or tb is None:
        return [*out, "where: no step trace in both runs (a run of an earlier format)"]
    step = first_step_difference(ta, tb)
    if step is not None:
        evidence = step.evidence
        made = [c.split(":")[1].strip() for c in out if not c.startswith("cause: environment")]
        if step.kind == "numerics" and made:
            # the same inputs compute differently because the runs were made differently
            evidence = evidence.replace("the kernels differ", f"the {made[0]} differs (above)")
        return [*out, f"where: {step.where(t)}", f"cause: {step.kind}: {evidence}"]
    oa, ob = ma.get("outputs", {}), mb.get("outputs", {})
    client = legacy_rng_difference(oa, ob)  # formats 1-2: one RNG file per client
    if oa.get(CLIENTS) != ob.get(CLIENTS):
        pa, pb = a.round_dir(t) / CLIENTS, b.round_dir(t) / CLIENTS
        client = first_client_difference(t, _bytes(a, pa), _bytes(b, pb)) or client
    if client:
        return [
            *out,
            f"where: round {t}, {client} (every client step identical)",
            "cause: random stream: a client's generator state after identical steps differs: "
            "its recorded RNG state was tampered or mis-restored",
        ]
    if oa.get(GLOBAL) != ob.get(GLOBAL):
        return [
            *out,
            f"where: round {t}, the server (every client step identical)",
            "cause: server: the clients' steps are equal, the aggregation or server update is not",
        ]
    return out


# -- show ----------------------------------------------------------------------------------
#: An algorithm's own metrics shown as columns (the rest are listed by name).
_EXTRA_COLUMNS = 4


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def show_run(run_dir: Path, echo: Echo) -> None:
    """Print a run's rounds, hashes and metrics as a table.

    Raises:
        ArtifactError: not a run directory.
    """
    run = _open_run(run_dir)
    rounds = run.complete_rounds()
    manifests = {t: run.manifest(t) for t in rounds}  # all checked before anything is printed
    m0 = manifests[0]
    env = m0.get("environment", {})
    echo(f"run {run.root}: {_rounds(rounds)}, config sha256 {str(m0.get('config_sha256'))[:12]}")
    echo(
        f"environment: torch {env.get('torch')}, numpy {env.get('numpy')}, python "
        f"{env.get('python')}, {env.get('cpu_isa')} ({env.get('machine')}), "
        f"{env.get('threads_per_client')} thread(s) per client"
    )
    # an algorithm's own metrics (recorded in the manifests' summary) get a column each
    extra = sorted({k for m in manifests.values() for k in m.get("summary", {})} - {"train_loss"})
    header = (
        f"{'round':>5}  {'kind':<5}  {'clients':>7}  {'global':<12}  {'manifest':<12}  "
        f"{'train_loss':>10}  {'test_loss':>9}  {'test_acc':>8}"
        + "".join(f"  {k[:12]:>12}" for k in extra[:_EXTRA_COLUMNS])
    )
    echo(header)
    for t in rounds:
        m = manifests[t]
        metrics: dict[str, Any] = {}
        if run.metrics_path(t).is_file():
            with contextlib.suppress(ArtifactError):
                metrics = run.read_json(run.metrics_path(t))
        train_loss = metrics.get("train_loss", m.get("summary", {}).get("train_loss"))
        notes = []
        if m.get("environment", env) != env:
            notes.append("other environment")
        if m.get("config_sha256") != m0.get("config_sha256"):
            notes.append("other config")
        echo(
            f"{t:>5}  {str(m.get('kind', '?')):<5}  {len(m.get('clients', [])):>7}  "
            f"{str(m.get('outputs', {}).get('global.safetensors', '-'))[:12]:<12}  "
            f"{_hash(run, run.round_dir(t) / MANIFEST)[:12]:<12}  {_num(train_loss):>10}  "
            f"{_num(metrics.get('test_loss')):>9}  {_num(metrics.get('test_accuracy')):>8}"
            + "".join(f"  {_num(m.get('summary', {}).get(k)):>12}" for k in extra[:_EXTRA_COLUMNS])
            + (f"  ({', '.join(notes)})" if notes else "")
        )
    if len(extra) > _EXTRA_COLUMNS:
        echo(f"more metrics in the manifests: {', '.join(k[:40] for k in extra[_EXTRA_COLUMNS:])}")
    code = recorded_code(run, rounds[-1], manifests[rounds[-1]])
    commit = f", commit {str(code.get('commit'))[:12]}" if code.get("commit") else ""
    dirty = " (with local changes)" if code.get("dirty") else ""
    version = code.get("version") or "version not recorded"
    fmt = manifest_format(manifests[rounds[-1]])
    echo(f"code: blazefl {version}{commit}{dirty}; manifest format {fmt}")
    user = manifests[rounds[-1]].get("user_code", {})
    if user:
        shown = ", ".join(f"{rel} {sha[:12]}" for rel, sha in sorted(user.items())[:8])
        more = f" and {len(user) - 8} more" if len(user) > 8 else ""
        echo(f"user code: {shown}{more} (a copy is in round-0000/code/)")
    last = run.last_complete_round()
    if last is not None:
        digest = _hash(run, run.round_dir(last) / MANIFEST)
        echo(
            f"digest: {digest} (sha256 of round-{last:04d}/{MANIFEST}; it covers every round "
            "back to the dataset through the recorded hashes)"
        )
    gap = [t for t in rounds if last is not None and t > last]
    if gap:
        echo(f"note: {_rounds(gap)} after a missing round (not part of the chain)")
    partial = sorted(p.name for p in run.root.glob(".*.partial"))
    if partial:
        echo(f"note: unfinished writes (removed on the next run): {', '.join(partial)}")
