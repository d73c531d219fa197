"""Row-parallel model passes (fastpath.row_parallel): with a CPU thread budget above 1, the
gradient attacks split each forward and input-gradient pass over worker threads. Users must
see the same adversarial examples as with one thread, their thread setting back afterwards,
and no parameter gradients."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor, nn
from trainguard.adversarial import (
    APGD,
    APGDT,
    FGSM,
    PGD,
    AdversarialStep,
    Square,
    load_digits,
    train_adversarial,
)
from trainguard.adversarial.attacks import loss_and_grad, objective_and_grad
from trainguard.adversarial.fastpath import MIN_ROWS, RowParallel, fast_cpu_pooling, row_parallel
from trainguard.adversarial.losses import Loss, attack_loss
from trainguard.adversarial.models import digits_cnn, mnist_cnn

CPU = torch.device("cpu")


@pytest.fixture
def threads() -> Iterator[Callable[[int], None]]:
    """Set torch's thread count for the test; the session's count is restored after it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = digits_cnn()
    train_adversarial(
        model, load_digits("train"), AdversarialStep("standard", 0.0), epochs=2, batch_size=64
    )
    return model.eval()


class _Threads(nn.Module):
    """The model, recording the threads that ran it and the batch sizes they saw."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls: list[tuple[str, int]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.calls.append((threading.current_thread().name, int(x.shape[0])))
        out: Tensor = self.model(x)
        return out


ATTACKS: dict[str, Callable[[nn.Module], Callable[[Tensor, Tensor], Tensor]]] = {
    "pgd-early-stop": lambda m: PGD(m, 0.1, steps=20, early_stop=True),
    "pgd-2-restarts": lambda m: PGD(m, 0.1, steps=10, restarts=2),
    "pgd-l2": lambda m: PGD(m, 0.8, steps=10, norm="l2", early_stop=True),
    "apgd-ce-early-stop": lambda m: APGD(m, 0.1, steps=20, early_stop=True),
    "apgd-dlr": lambda m: APGD(m, 0.1, steps=10, loss="dlr"),
    "apgd-t": lambda m: APGDT(m, 0.1, steps=10, target_classes=3, early_stop=True),
    "fgsm": lambda m: FGSM(m, 0.1),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ATTACKS))
def test_two_threads_give_the_single_thread_results(name, trained_cnn, digits_test, threads):
    x, y = digits_test.x[:160], digits_test.y[:160]
    counted = _Threads(trained_cnn)
    attack = ATTACKS[name](counted)
    threads(1)
    ref = attack(x, y)
    assert all(t == threading.main_thread().name for t, _ in counted.calls)
    counted.calls.clear()
    threads(2)
    out = attack(x, y)
    assert torch.get_num_threads() == 2  # the caller's setting is back
    workers = [n for t, n in counted.calls if t.startswith("trainguard-attack")]
    assert workers and min(workers) >= MIN_ROWS  # the passes did split over worker threads
    assert torch.equal(out, ref)
    eps = attack.eps  # type: ignore[attr-defined]
    if name != "pgd-l2":
        assert (out - x).abs().max() <= eps + 1e-6
    assert out.min() >= 0 and out.max() <= 1
    with torch.no_grad():
        assert (trained_cnn(out).argmax(1) != y).any()  # the attack does something here


@pytest.mark.parametrize("factory,shape", [(digits_cnn, (1, 8, 8)), (mnist_cnn, (1, 28, 28))])
@pytest.mark.parametrize("rows", [2 * MIN_ROWS, 77, 128])
def test_split_passes_are_bitwise_one_pass(factory, shape, rows):
    torch.manual_seed(1)
    model = factory().eval()
    x = torch.rand(rows, *shape)
    y = torch.randint(0, 10, (rows,))

    def objective(z: Tensor) -> Tensor:
        return attack_loss(Loss.DLR, z, y, None)

    with fast_cpu_pooling(CPU):
        ref = objective_and_grad(model, x, objective)
        passes = RowParallel(3)
        try:
            assert passes.parts(rows) >= 2
            got = objective_and_grad(model, x, objective, passes)
        finally:
            passes.close()
    for a, b in zip(got, ref, strict=True):
        assert torch.equal(a, b)


def test_small_batches_and_one_thread_run_in_one_pass(threads):
    passes = RowParallel(4)
    try:
        assert passes.parts(2 * MIN_ROWS - 1) == 1
        assert passes.parts(100 * MIN_ROWS) == 4
    finally:
        passes.close()
    threads(1)
    with row_parallel(CPU) as p:
        assert p is None
    threads(2)
    with row_parallel(CPU, enabled=False) as p:
        assert p is None and torch.get_num_threads() == 2


def test_thread_count_is_restored_when_the_model_fails(threads, digits_test):
    class Broken(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            raise RuntimeError("model failure")

    threads(2)
    with pytest.raises(RuntimeError, match="model failure"):
        PGD(Broken(), 0.1, steps=2)(digits_test.x[:64], digits_test.y[:64])
    assert torch.get_num_threads() == 2


def test_parameter_grads_untouched_and_square_keeps_the_thread_budget(threads, digits_test):
    torch.manual_seed(0)
    model = digits_cnn().eval()
    x, y = digits_test.x[:64], digits_test.y[:64]
    threads(2)
    PGD(model, 0.1, steps=3)(x, y)
    assert all(p.grad is None for p in model.parameters())
    seen: list[int] = []

    class Probe(nn.Module):  # Square does not split passes: torch keeps its two threads
        def forward(self, z: Tensor) -> Tensor:
            seen.append(torch.get_num_threads())
            out: Tensor = model(z)
            return out

    Square(Probe(), 0.05, 5, fast=False)(x, y)
    assert seen and set(seen) == {2}


def test_loss_and_grad_outside_attacks_is_unchanged(digits_test, threads):
    """Training calls loss_and_grad without passes: one pass, whatever the thread count."""
    torch.manual_seed(0)
    model = digits_cnn().eval()
    x, y = digits_test.x[:64], digits_test.y[:64]
    threads(1)
    ref = loss_and_grad(model, x, y)
    threads(2)
    got = loss_and_grad(model, x, y)
    assert all(torch.equal(a, b) for a, b in zip(got, ref, strict=True))
