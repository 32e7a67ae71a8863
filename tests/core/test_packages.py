"""Package machinery: arena layout round trips, uplink hashing, ordered result windows, client
sampling from the server's own generator, and flat model views."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from blazefl import BaseServerHandler, ClientResult, ClientTask, create_rng_suite, package_sha256
from blazefl.core import flatten_module_, package_layout
from blazefl.core.trainers import ordered_window


@dataclass
class Mixed:
    weights: torch.Tensor
    counts: torch.Tensor
    mask: torch.Tensor
    half: torch.Tensor
    cid: int
    loss: float
    name: str
    empty: torch.Tensor
    scalar: torch.Tensor
    raw: torch.Tensor
    tags: list[str] = field(default_factory=lambda: ["a", "b"])


def mixed() -> Mixed:
    g = torch.Generator().manual_seed(0)
    return Mixed(
        weights=torch.randn(3, 5, generator=g),
        counts=torch.arange(7, dtype=torch.int64).reshape(7, 1) - 3,
        mask=torch.tensor([True, False, True]),
        half=torch.randn(4, generator=g).to(torch.bfloat16),
        cid=42,
        loss=0.123456789,
        name="client-42",
        empty=torch.zeros(0, 2, dtype=torch.int32),
        scalar=torch.tensor(2.5, dtype=torch.float64),
        raw=torch.arange(5, dtype=torch.uint8),
    )


def assert_same(a: Mixed, b: Mixed) -> None:
    for f in a.__dataclass_fields__:
        x, y = getattr(a, f), getattr(b, f)
        if isinstance(x, torch.Tensor):
            assert y.dtype == x.dtype and y.shape == x.shape, f
            assert torch.equal(x, y), f
        else:
            assert x == y, f


def test_layout_write_read_round_trip_every_dtype_and_scalars() -> None:
    pkg = mixed()
    layout = package_layout(pkg)
    assert layout.scalars == {
        "cid": 42,
        "loss": 0.123456789,
        "name": "client-42",
        "tags": ["a", "b"],
    }
    assert all(slot.offset % 64 == 0 for slot in layout.tensors)  # aligned slots
    arena = torch.full((layout.nbytes + 7,), 0xAB, dtype=torch.uint8)
    layout.write(pkg, arena)

    views = layout.read(arena)
    assert_same(pkg, views)
    assert views.weights.untyped_storage().data_ptr() == arena.untyped_storage().data_ptr()
    copied = layout.read(arena, copy=True)
    assert_same(pkg, copied)
    arena.zero_()  # the copy owns its memory, the views do not
    assert_same(pkg, copied)
    assert not torch.equal(views.weights, pkg.weights)


def test_layout_writes_non_contiguous_tensors() -> None:
    pkg = mixed()
    pkg.weights = torch.randn(5, 3).t()  # transposed view
    layout = package_layout(pkg)
    arena = torch.empty(layout.nbytes, dtype=torch.uint8)
    layout.write(pkg, arena)
    assert torch.equal(layout.read(arena).weights, pkg.weights)


def test_layout_write_file_matches_the_arena_layout(tmp_path: Path) -> None:
    pkg = mixed()
    pkg.weights = torch.randn(5, 3).t()  # non-contiguous too
    layout = package_layout(pkg)
    path = tmp_path / "uplink.bin"
    layout.write_file(pkg, path)
    data = path.read_bytes()
    assert len(data) == layout.nbytes
    assert_same(pkg, layout.read(torch.frombuffer(bytearray(data), dtype=torch.uint8)))


def test_layout_rejects_non_dataclass() -> None:
    with pytest.raises(TypeError, match="dataclass"):
        package_layout({"model": torch.zeros(1)})


DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int8,
    torch.int64,
    torch.uint8,
    torch.bool,
    torch.int32,
]


@dataclass
class Pair:
    a: torch.Tensor
    b: torch.Tensor
    n: int


@settings(max_examples=40, deadline=None)
@given(
    dtypes=st.tuples(st.sampled_from(DTYPES), st.sampled_from(DTYPES)),
    shapes=st.tuples(
        st.lists(st.integers(0, 5), max_size=3), st.lists(st.integers(0, 5), max_size=3)
    ),
    n=st.integers(-(2**40), 2**40),
    seed=st.integers(0, 2**31),
)
def test_layout_round_trip_property(dtypes, shapes, n, seed) -> None:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)

    def tensor(dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
        raw = torch.randint(
            0,
            256,
            (int(torch.Size(shape).numel()) * dtype.itemsize,),
            dtype=torch.uint8,
            generator=g,
        )
        if dtype == torch.bool:
            raw = raw % 2
        return raw.view(dtype).reshape(shape)

    pkg = Pair(tensor(dtypes[0], shapes[0]), tensor(dtypes[1], shapes[1]), n)
    layout = package_layout(pkg)
    arena = torch.empty(layout.nbytes, dtype=torch.uint8)
    layout.write(pkg, arena)
    back = layout.read(arena, copy=True)
    for name in ("a", "b"):
        x, y = getattr(pkg, name), getattr(back, name)
        assert x.dtype == y.dtype and x.shape == y.shape
        # compare bits, so NaN payloads count as equal
        assert torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8))
    assert back.n == n
    assert package_sha256(back) == package_sha256(pkg)


def test_sha256_changes_when_one_byte_changes() -> None:
    pkg = mixed()
    base = package_sha256(pkg)
    assert package_sha256(mixed()) == base  # equal content, equal hash
    for name in ("weights", "counts", "half", "raw", "scalar"):
        changed = mixed()
        getattr(changed, name).reshape(-1).view(torch.uint8)[-1] ^= 1  # flip one bit
        assert package_sha256(changed) != base, name
    for name, value in (("cid", 43), ("loss", 0.123456788), ("name", "client-43")):
        changed = mixed()
        setattr(changed, name, value)
        assert package_sha256(changed) != base, name


def test_sha256_covers_dtype_and_shape_not_only_bytes() -> None:
    pkg = mixed()
    base = package_sha256(pkg)
    pkg.weights = pkg.weights.reshape(5, 3)  # same bytes, other shape
    assert package_sha256(pkg) != base
    pkg = mixed()
    pkg.raw = pkg.raw.view(torch.int8)  # same bytes, other dtype
    assert package_sha256(pkg) != base
    pkg = mixed()
    pkg.weights = pkg.weights.t().contiguous().t()  # same values, other memory order
    assert package_sha256(pkg) == base


# -- ordered_window ------------------------------------------------------------------------------
def _task(i: int) -> ClientTask:
    return ClientTask(1, i, {})


def _result(task: ClientTask) -> ClientResult:
    return ClientResult(task.cid, None, {})


def test_ordered_window_yields_in_task_order_when_futures_complete_in_reverse() -> None:
    n = 6
    futures: list[Future[ClientResult]] = []
    completed: list[int] = []

    def submit(task: ClientTask) -> Future[ClientResult]:
        fut: Future[ClientResult] = Future()
        fut.task = task  # type: ignore[attr-defined]
        futures.append(fut)
        return fut

    def complete_in_reverse() -> None:
        while len(futures) < n:
            time.sleep(0.001)
        for fut in reversed(futures):
            completed.append(fut.task.cid)  # type: ignore[attr-defined]
            fut.set_result(_result(fut.task))  # type: ignore[attr-defined]
            time.sleep(0.002)

    thread = threading.Thread(target=complete_in_reverse)
    thread.start()
    got = [r.cid for r in ordered_window(submit, [_task(i) for i in range(n)], window=n)]
    thread.join()
    assert completed == list(range(n))[::-1]
    assert got == list(range(n))


def test_ordered_window_bounds_inflight_and_keeps_order_under_random_delays() -> None:
    n, window = 20, 3
    delays = torch.rand(n, generator=torch.Generator().manual_seed(1)) * 0.01
    lock = threading.Lock()
    inflight = peak = 0
    finished: list[int] = []

    def work(task: ClientTask) -> ClientResult:
        time.sleep(float(delays[task.cid]))
        with lock:
            finished.append(task.cid)
        return _result(task)

    def release(_: Future[ClientResult]) -> None:
        nonlocal inflight
        with lock:
            inflight -= 1

    with ThreadPoolExecutor(4) as pool:

        def submit(task: ClientTask) -> Future[ClientResult]:
            nonlocal inflight, peak
            with lock:
                inflight += 1
                peak = max(peak, inflight)
            fut = pool.submit(work, task)
            fut.add_done_callback(release)
            return fut

        got = [r.cid for r in ordered_window(submit, [_task(i) for i in range(n)], window)]
    assert got == list(range(n))
    assert peak <= window
    assert finished != sorted(finished)  # completion order really differed


def test_ordered_window_cancels_pending_on_error() -> None:
    futures: list[Future[ClientResult]] = []

    def submit(task: ClientTask) -> Future[ClientResult]:
        fut: Future[ClientResult] = Future()
        if task.cid == 0:
            fut.set_exception(RuntimeError("client 0 broke"))
        futures.append(fut)
        return fut

    with pytest.raises(RuntimeError, match="client 0 broke"):
        list(ordered_window(submit, [_task(i) for i in range(4)], window=4))
    assert all(f.cancelled() for f in futures[1:])


# -- BaseServerHandler.sample_clients --------------------------------------------------------------
class _Server(BaseServerHandler):
    def downlink_package(self):  # type: ignore[no-untyped-def]
        return None

    def load(self, payload) -> bool:  # type: ignore[no-untyped-def]
        return True

    def global_update(self) -> None:
        self.round += 1


def _sampler(seed: int = 5, k: int = 4, n: int = 10) -> _Server:
    return _Server(n, k, total_rounds=3, generator=create_rng_suite(seed, 2**62).torch)


def test_sample_clients_uses_only_the_server_generator() -> None:
    before = torch.random.get_rng_state()
    server = _sampler()
    draws = [server.sample_clients() for _ in range(5)]
    assert torch.equal(torch.random.get_rng_state(), before)  # global RNG untouched
    for clients in draws:
        assert clients == sorted(set(clients)) and len(clients) == 4
        assert all(0 <= c < 10 for c in clients)
    assert len({tuple(c) for c in draws}) > 1


def test_sample_clients_is_reproducible_from_generator_state() -> None:
    a, b = _sampler(), _sampler()
    assert [a.sample_clients() for _ in range(3)] == [b.sample_clients() for _ in range(3)]
    state = a.generator.get_state()
    nxt = a.sample_clients()
    torch.manual_seed(999)  # the global RNG has no say
    a.generator.set_state(state)
    assert a.sample_clients() == nxt
    five, six = _sampler(seed=5), _sampler(seed=6)
    assert [five.sample_clients() for _ in range(3)] != [six.sample_clients() for _ in range(3)]


def test_full_participation_draws_nothing() -> None:
    server = _sampler(k=10)
    state = server.generator.get_state()
    assert server.sample_clients() == list(range(10))
    assert torch.equal(server.generator.get_state(), state)


# -- flatten_module_ ----------------------------------------------------------------------------
def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 2))


def test_flatten_module_keeps_parameters_and_buffers_as_views() -> None:
    model = _net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flat = flatten_module_(model)
    float_numel = sum(v.numel() for v in state.values() if v.is_floating_point())
    assert flat.numel() == float_numel
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name  # values preserved
        if value.is_floating_point():
            assert value.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr(), name
    assert model[1].num_batches_tracked.dtype == torch.int64  # non-float buffers untouched
    assert all(isinstance(p, nn.Parameter) for p in model.parameters())


def test_flat_copy_changes_model_output_and_training_changes_flat() -> None:
    model = _net().eval()
    flat = flatten_module_(model)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    before = model(x).detach().clone()
    torch.manual_seed(1)
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 2))
    nn.init.uniform_(other[1].weight)  # non-trivial BatchNorm affine and running stats
    other[1].running_mean.uniform_(-1, 1)
    other_flat = flatten_module_(other.eval())
    flat.copy_(other_flat)  # load a whole model with one copy
    after = model(x)
    assert not torch.allclose(before, after)
    assert torch.equal(after, other(x))

    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    snapshot = flat.clone()
    model(x).sum().backward()
    opt.step()
    assert not torch.equal(flat, snapshot)  # the optimizer wrote through the views


def test_flatten_module_rejects_mixed_float_dtypes() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).double())
    with pytest.raises(TypeError, match="one float dtype"):
        flatten_module_(model)


def test_flatten_module_gives_tied_parameters_one_slot() -> None:
    model = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    model[1].weight = model[0].weight  # tied
    flat = flatten_module_(model)
    assert flat.numel() == 9
    flat.copy_(torch.arange(9.0))
    assert model[1].weight is model[0].weight
    assert model[1].weight.flatten().tolist() == list(range(9))
