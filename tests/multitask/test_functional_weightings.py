"""Each functional weighting against its paper's formula, computed here independently (numpy, scipy, brute force)
from explicit gradient vectors; the degenerate Gram matrices the balancer relies on; torchjd where we call it."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize, nnls
from torch import Tensor
from torchjd.aggregation import (
    AlignedMTLWeighting,
    IMTLGWeighting,
    MGDAWeighting,
    PCGradWeighting,
    UPGradWeighting,
)
from torchjd.linalg import DualConeProjector

from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.multitask import functional, pcgrad_coefficients
from torchbricks_lightning.multitask.functional import (
    aligned_mtl_weights,
    cagrad_weights,
    imtl_g_weights,
    mgda_weights,
    nash_mtl_weights,
    pcgrad_orders,
    pcgrad_weights,
    upgrad_weights,
)

Weighting = Callable[[Tensor], Tensor]
WEIGHTINGS: dict[str, Weighting] = {
    "mgda": mgda_weights,
    "imtl_g": imtl_g_weights,
    "aligned_mtl": aligned_mtl_weights,
    "cagrad": cagrad_weights,
    "nash_mtl": nash_mtl_weights,
    "upgrad": upgrad_weights,
    "pcgrad": lambda gram: pcgrad_weights(gram, torch.Generator().manual_seed(0)),
}
EACH = pytest.mark.parametrize("name", list(WEIGHTINGS), ids=list(WEIGHTINGS))

# Explicit task gradients (rows), float64: two at 120 degrees, three with one conflict pair, four random.
GRADIENTS = {
    "conflict2": torch.tensor([[1.0, 0.0], [-1.0, 3.0**0.5]], dtype=torch.float64),
    "three": torch.tensor([[1.0, 2.0, 0.0, -1.0], [-2.0, 0.5, 1.0, 1.0], [0.5, -1.0, 2.0, 0.0]], dtype=torch.float64),
    "four": torch.randn(4, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
}
CASES = pytest.mark.parametrize("case", list(GRADIENTS), ids=list(GRADIENTS))


def gram_of(grads: Tensor) -> Tensor:
    return grads @ grads.T


def as_numpy(grads: Tensor) -> np.ndarray:
    return grads.numpy().astype(np.float64)


# ------------------------------------------------------------------------------------------------ papers' formulas
@CASES
def test_mgda_is_the_min_norm_point_of_the_hull_found_by_enumerating_supports(case: str) -> None:
    grads = as_numpy(GRADIENTS[case])
    gram = grads @ grads.T
    best = math.inf
    for size in range(1, len(gram) + 1):  # the min-norm point on each face: a_S = G_SS^-1 1 / (1^T G_SS^-1 1)
        for support in itertools.combinations(range(len(gram)), size):
            block = gram[np.ix_(support, support)]
            solution = np.linalg.solve(block, np.ones(size))
            if solution.sum() > 0 and (solution >= 0).all():
                weights = solution / solution.sum()
                best = min(best, float(weights @ block @ weights))
    ours = mgda_weights(torch.from_numpy(gram)).numpy()
    assert ours.min() >= 0
    assert ours.sum() == pytest.approx(1.0, abs=1e-12)
    assert float(ours @ gram @ ours) == pytest.approx(best, rel=1e-10, abs=1e-14)


def test_mgda_of_torchjd_stops_short_of_the_optimum_and_picks_a_zero_gradient() -> None:
    gram = gram_of(GRADIENTS["four"])
    ours, theirs = mgda_weights(gram), MGDAWeighting()(gram)
    assert float(ours @ gram @ ours) <= float(theirs @ gram @ theirs) + 1e-12  # ours is optimal, theirs close
    torch.testing.assert_close(theirs, ours, atol=5e-2, rtol=0)
    with_zero = gram_of(torch.cat([GRADIENTS["three"], torch.zeros(1, 4, dtype=torch.float64)]))
    assert float(MGDAWeighting()(with_zero)[3]) == 1.0  # the zero vector is the min-norm point: no task moves
    assert mgda_weights(with_zero).tolist()[3] == 0.0


@CASES
def test_imtl_g_is_the_papers_closed_form_and_projects_equally_on_every_unit_gradient(case: str) -> None:
    grads = as_numpy(GRADIENTS[case])
    units = grads / np.linalg.norm(grads, axis=1, keepdims=True)
    differences, unit_differences = grads[0] - grads[1:], units[0] - units[1:]  # D and U of the paper
    rest = grads[0] @ unit_differences.T @ np.linalg.inv(differences @ unit_differences.T)
    expected = np.concatenate([[1.0 - rest.sum()], rest])
    ours = imtl_g_weights(gram_of(GRADIENTS[case]))
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-9, atol=1e-12)
    projections = units @ (ours.numpy() @ grads)
    np.testing.assert_allclose(projections, projections[0], rtol=1e-9)
    torch.testing.assert_close(IMTLGWeighting()(gram_of(GRADIENTS[case])), ours)  # torchjd, which we call


def near_collinear_float32() -> Tensor:
    """``g``, ``0.3 g`` and an independent ``h`` in float32: the float32 Gram matrix has a rounding eigenvalue."""
    base = torch.randn(2, 1000, generator=torch.Generator().manual_seed(0))
    return torch.stack([base[0], 0.3 * base[0], base[1]])


@pytest.mark.parametrize("name", ["imtl_g", "aligned_mtl"], ids=["imtl_g", "aligned_mtl"])
def test_rank_decisions_follow_the_precision_the_gram_matrix_was_computed_in(name: str) -> None:
    grads = near_collinear_float32()
    exact = WEIGHTINGS[name](gram_of(grads.double()))  # in float64, from the float32 values: rank 2
    ours = WEIGHTINGS[name](gram_of(grads))
    torch.testing.assert_close(ours.double(), exact, rtol=1e-3, atol=1e-4)
    if name == "imtl_g":  # torchjd on the float32 matrix cast to float64 inverts the rounding eigenvalue
        wrong = IMTLGWeighting()(gram_of(grads).double())
        assert float((wrong - exact).abs().max()) > 0.1


@CASES
def test_aligned_mtl_is_b_times_the_mean_and_aligns_to_condition_number_one(case: str) -> None:
    grads = as_numpy(GRADIENTS[case])
    gram = grads @ grads.T
    eigenvalues, vectors = np.linalg.eigh(gram)
    balance = np.sqrt(eigenvalues.min()) * vectors @ np.diag(eigenvalues**-0.5) @ vectors.T  # B of Algorithm 1
    ours = aligned_mtl_weights(torch.from_numpy(gram))
    np.testing.assert_allclose(ours.numpy(), balance @ np.full(len(gram), 1 / len(gram)), rtol=1e-9)
    aligned = balance.T @ grads  # the aligned gradients: orthogonal, all of norm sqrt(lambda_min)
    np.testing.assert_allclose(aligned @ aligned.T, eigenvalues.min() * np.eye(len(gram)), atol=1e-9)
    torch.testing.assert_close(AlignedMTLWeighting(scale_mode="min")(torch.from_numpy(gram)), ours)


def cagrad_by_slsqp(grads: np.ndarray, c: float) -> tuple[float, np.ndarray]:
    """The official code's solver: scipy's SLSQP on the dual objective, from the mean."""
    gram = grads @ grads.T
    count = len(gram)
    mean = np.full(count, 1 / count)
    radius = c * math.sqrt(mean @ gram @ mean)

    def objective(weights: np.ndarray) -> float:
        return float(weights @ gram @ mean + radius * math.sqrt(max(weights @ gram @ weights, 0.0)))

    result = minimize(
        objective,
        mean,
        bounds=[(0.0, 1.0)] * count,
        constraints={"type": "eq", "fun": lambda w: w.sum() - 1},
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    return float(result.fun), objective


@CASES
@pytest.mark.parametrize("c", [0.2, 0.5, 0.9], ids=["c0.2", "c0.5", "c0.9"])
def test_cagrad_solves_the_dual_at_least_as_well_as_slsqp_and_its_update_is_the_best_in_the_ball(
    case: str, c: float
) -> None:
    grads = as_numpy(GRADIENTS[case])
    count = len(grads)
    best, objective = cagrad_by_slsqp(grads, c)
    ours = cagrad_weights(gram_of(GRADIENTS[case]), c).numpy()
    weights = ours - 1 / count  # = sqrt(phi) / |g_w| * w
    dual_point = weights / weights.sum()
    assert objective(dual_point) <= best + 1e-9 * abs(best) + 1e-12
    mean_gradient, update = grads.mean(axis=0), ours @ grads
    assert np.linalg.norm(update - mean_gradient) == pytest.approx(c * np.linalg.norm(mean_gradient), rel=1e-9)
    # the primal: no d in the ball |d - g_0| <= c |g_0| improves the worst task more
    directions = np.random.default_rng(0).normal(size=(4000, grads.shape[1]))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    candidates = mean_gradient + c * np.linalg.norm(mean_gradient) * directions
    assert (candidates @ grads.T).min(axis=1).max() <= (grads @ update).min() + 1e-9
    rescaled = cagrad_weights(gram_of(GRADIENTS[case]), c, rescale=True).numpy()
    np.testing.assert_allclose(rescaled, ours / (1 + c * c), rtol=1e-12)


@pytest.mark.parametrize("seed", [39, 57], ids=["seed39", "seed57"])
def test_cagrad_with_an_opposite_pair_among_other_tasks_is_still_the_best_update_in_the_ball(seed: int) -> None:
    # 0 is in the hull (g_1 + g_6 = 0) but the optimum's g_w is not 0: the search must not stop at rounding level
    # (these seeds gave an update outside the ball when it did)
    grads = torch.randn(6, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    grads[5] = -grads[0]
    ours = cagrad_weights(gram_of(grads)).numpy()
    values, update = as_numpy(grads), ours @ as_numpy(grads)
    mean_gradient = values.mean(axis=0)
    assert np.linalg.norm(update - mean_gradient) <= 0.5 * np.linalg.norm(mean_gradient) * (1 + 1e-9)
    directions = np.random.default_rng(seed).normal(size=(4000, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    candidates = mean_gradient + 0.5 * np.linalg.norm(mean_gradient) * directions
    assert (candidates @ values.T).min(axis=1).max() <= (values @ update).min() + 1e-9


def test_cagrad_where_no_update_improves_every_task_projects_the_mean_onto_the_dual_cone() -> None:
    # g_1 = -g_2: F* = 0 at g_w = 0, so sqrt(phi) / |g_w| is undefined; the best updates are (0, y), y in [1/6, 1/2]
    grads = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    ours = cagrad_weights(gram_of(grads))
    torch.testing.assert_close(ours, torch.full((3,), 1 / 3, dtype=torch.float64))  # g_0 is in the cone already
    torch.testing.assert_close(ours @ grads, torch.tensor([0.0, 1 / 3], dtype=torch.float64))


@CASES
def test_nash_mtl_solves_g_alpha_equals_one_over_alpha(case: str) -> None:
    gram = gram_of(GRADIENTS[case])
    exact = nash_mtl_weights(gram, ridge=0.0)
    assert bool((exact > 0).all())
    torch.testing.assert_close(gram @ exact, 1 / exact, rtol=1e-9, atol=0)
    torch.testing.assert_close(nash_mtl_weights(gram), exact, rtol=1e-5, atol=0)  # the default ridge's bias


class NNLSProjector(DualConeProjector):
    """torchjd's projector interface, solved here by scipy's NNLS on the gradients themselves."""

    def __init__(self, grads: np.ndarray) -> None:
        self.grads = grads

    def __call__(self, U: Tensor, G: Tensor) -> Tensor:  # noqa: N803 - torchjd's argument names
        rows = []
        for u in U.numpy():  # pi(J^T u) = J^T (u + z), z = argmin_{z >= 0} |J^T u + J^T z|
            shift, _ = nnls(self.grads.T, -(u @ self.grads))
            rows.append(u + shift)
        return torch.tensor(np.array(rows), dtype=G.dtype)


@CASES
def test_upgrad_averages_the_projections_onto_the_dual_cone(case: str) -> None:
    grads = as_numpy(GRADIENTS[case])
    count = len(grads)
    ours = upgrad_weights(gram_of(GRADIENTS[case]))
    projected = []
    for task in range(count):
        shift, _ = nnls(grads.T, -grads[task])  # the projection of g_i onto the dual cone
        projected.append(np.eye(count)[task] + shift)
    np.testing.assert_allclose(ours.numpy(), np.mean(projected, axis=0), rtol=1e-8, atol=1e-10)
    projections = np.array(projected) @ grads
    assert (projections @ grads.T).min() >= -1e-9  # each projection is in the dual cone: no task gets worse
    # torchjd's UPGrad with a projector that does not need quadprog: the same definition
    torchjd_weights = UPGradWeighting(projector=NNLSProjector(grads))(gram_of(GRADIENTS[case]))
    torch.testing.assert_close(torchjd_weights, ours, rtol=1e-8, atol=1e-10)


def project_vectors(grads: Tensor, orders: list[list[int]]) -> Tensor:
    """PCGrad on the vectors themselves (Algorithm 1 of the paper)."""
    projected = []
    for i, order in enumerate(orders):
        current = grads[i].clone()
        for j in order:
            dot = current @ grads[j]
            if j != i and dot < 0:
                current = current - dot / (grads[j] @ grads[j]) * grads[j]
        projected.append(current)
    return torch.stack(projected).sum(dim=0)


@pytest.mark.parametrize("tasks", [2, 3, 5], ids=["T2", "T3", "T5"])
def test_pcgrad_equals_projecting_the_vectors_in_the_generators_orders(tasks: int) -> None:
    data = torch.Generator().manual_seed(tasks)
    for step in range(5):
        grads = torch.randn(tasks, 6, generator=data, dtype=torch.float64)
        orders = pcgrad_orders(tasks, torch.Generator().manual_seed(step))
        ours = pcgrad_weights(gram_of(grads), torch.Generator().manual_seed(step))
        torch.testing.assert_close(ours @ grads, project_vectors(grads, orders))
        assert ours.tolist() == pcgrad_coefficients(gram_of(grads).tolist(), orders)[0]


def previous_pcgrad_coefficients(gram: list[list[float]], orders: list[list[int]]) -> list[float]:
    """``pcgrad_coefficients`` as it was before it became a wrapper (commit f333f5c), verbatim."""
    count = len(gram)
    rows = [[1.0 if i == k else 0.0 for k in range(count)] for i in range(count)]
    for i in range(count):
        row = rows[i]
        for j in orders[i]:
            norm = gram[j][j]
            if j == i or norm <= 0.0:
                continue
            dot = sum(row[k] * gram[k][j] for k in range(count))
            if dot < 0.0:
                row[j] -= dot / norm
    return [sum(rows[i][j] for i in range(count)) for j in range(count)]


def test_pcgrad_weights_are_identical_to_the_previous_coefficients_given_the_same_orders() -> None:
    data = torch.Generator().manual_seed(1)
    for tasks in (2, 3, 4):
        grads = torch.randn(tasks, 5, generator=data, dtype=torch.float64)
        orders = [torch.randperm(tasks, generator=data).tolist() for _ in range(tasks)]
        gram = gram_of(grads).tolist()
        assert pcgrad_weights(gram_of(grads), orders=orders).tolist() == previous_pcgrad_coefficients(gram, orders)
        assert pcgrad_coefficients(gram, orders)[0] == previous_pcgrad_coefficients(gram, orders)


def test_pcgrad_coefficients_keeps_coefficient_one_for_a_zero_gradient_where_pcgrad_weights_gives_zero() -> None:
    grads = torch.cat([GRADIENTS["three"], torch.zeros(1, 4, dtype=torch.float64)])
    orders = pcgrad_orders(4, torch.Generator().manual_seed(2))
    gram = gram_of(grads).tolist()
    previous = previous_pcgrad_coefficients(gram, orders)
    assert pcgrad_coefficients(gram, orders)[0] == previous  # the logged value of the PCGrad balancer: unchanged
    assert previous[3] == 1.0
    assert pcgrad_weights(gram_of(grads), orders=orders).tolist() == [*previous[:3], 0.0]


def test_pcgrad_of_torchjd_is_the_same_formula_but_draws_its_orders_from_the_global_rng() -> None:
    grads = torch.randn(4, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    gram = gram_of(grads)
    torch.manual_seed(7)
    theirs = PCGradWeighting()(gram)
    torch.manual_seed(7)  # torchjd draws randperm(T) per task from the global RNG: replay those orders
    orders = [torch.randperm(4).tolist() for _ in range(4)]
    torch.testing.assert_close(theirs, pcgrad_weights(gram, orders=orders))
    results = set()
    for seed in range(6):
        torch.manual_seed(seed)
        results.add(tuple(PCGradWeighting()(gram).tolist()))
    assert len(results) > 1, "the global seed changes torchjd's result: not reproducible from (seed, step)"
    same = {tuple(pcgrad_weights(gram, torch.Generator().manual_seed(5)).tolist()) for _ in range(3)}
    assert len(same) == 1


# ------------------------------------------------------------------------------------------------ degenerate cases
G_VECTOR = torch.tensor([[3.0, 4.0]], dtype=torch.float64)  # |g| = 5

DEGENERATE = {  # name -> (gradients, the expected coefficients of each method)
    "T=1": (
        G_VECTOR,
        {
            "mgda": [1.0],
            "imtl_g": [1.0],
            "aligned_mtl": [1.0],
            "cagrad": [1.5],
            "nash_mtl": [0.2],
            "upgrad": [1.0],
            "pcgrad": [1.0],
        },
    ),
    "collinear g, 2g": (
        torch.cat([G_VECTOR, 2 * G_VECTOR]),
        {
            "mgda": [1.0, 0.0],
            "imtl_g": [1 / 3, 2 / 3],
            "aligned_mtl": [0.3, 0.6],
            "cagrad": [1.25, 0.5],
            "nash_mtl": [1 / (5 * 2**0.5), 1 / (10 * 2**0.5)],
            "upgrad": [0.5, 0.5],
            "pcgrad": [1.0, 1.0],
        },
    ),
    "opposite g, -g": (
        torch.cat([G_VECTOR, -G_VECTOR]),
        {
            "mgda": [0.5, 0.5],
            "imtl_g": [0.0, 0.0],
            "aligned_mtl": [0.0, 0.0],
            "cagrad": [0.5, 0.5],
            "nash_mtl": [200.0, 200.0],  # 1 / sqrt(ridge * |g|^2): bounded by the ridge
            "upgrad": [1.0, 1.0],
            "pcgrad": [2.0, 2.0],
        },
    ),
}


@EACH
@pytest.mark.parametrize("degenerate", list(DEGENERATE), ids=["T1", "collinear", "opposite"])
def test_degenerate_gram_matrices_give_the_documented_coefficients(name: str, degenerate: str) -> None:
    grads, expected = DEGENERATE[degenerate]
    ours = WEIGHTINGS[name](gram_of(grads))
    torch.testing.assert_close(ours, torch.tensor(expected[name], dtype=torch.float64), rtol=1e-6, atol=1e-9)


@EACH
@CASES
def test_a_zero_gradient_gets_zero_and_the_others_are_as_if_it_were_absent(name: str, case: str) -> None:
    grads = GRADIENTS[case]
    with_zero = torch.cat([grads[:1], torch.zeros(1, grads.shape[1], dtype=grads.dtype), grads[1:]])
    if name == "pcgrad":  # the same relative orders as without the zero task
        orders = pcgrad_orders(len(grads), torch.Generator().manual_seed(0))
        shifted = [[j + (j >= 1) for j in order] for order in orders]
        ours = pcgrad_weights(gram_of(with_zero), orders=[shifted[0], [0], *shifted[1:]])
        alone = pcgrad_weights(gram_of(grads), orders=orders)
    else:
        ours, alone = WEIGHTINGS[name](gram_of(with_zero)), WEIGHTINGS[name](gram_of(grads))
    assert ours[1].item() == 0.0  # (the two Gram matrices differ in the last bits: matmuls of other shapes)
    torch.testing.assert_close(torch.cat([ours[:1], ours[2:]]), alone, rtol=1e-7, atol=1e-12)


@EACH
@pytest.mark.parametrize("scale", [1e-4, 1e4], ids=["small", "large"])
def test_the_coefficients_do_not_depend_on_the_gradients_scale_except_nash_mtls(name: str, scale: float) -> None:
    grads = GRADIENTS["three"]
    ours, scaled = WEIGHTINGS[name](gram_of(grads)), WEIGHTINGS[name](gram_of(scale * grads))
    expected = ours / scale if name == "nash_mtl" else ours  # c scales as 1 / |g|
    torch.testing.assert_close(scaled, expected, rtol=1e-7, atol=0)


@EACH
def test_all_zero_gives_zeros(name: str) -> None:
    assert WEIGHTINGS[name](torch.zeros(3, 3)).tolist() == [0.0, 0.0, 0.0]


@EACH
def test_float32_input_gives_float32_close_to_float64_without_grad_and_without_the_global_rng(name: str) -> None:
    gram = gram_of(GRADIENTS["four"])
    state = torch.random.get_rng_state()
    single = WEIGHTINGS[name](gram.float().requires_grad_())
    assert torch.equal(torch.random.get_rng_state(), state)
    assert single.dtype == torch.float32
    assert not single.requires_grad
    assert single.shape == (4,)
    torch.testing.assert_close(single.double(), WEIGHTINGS[name](gram), rtol=1e-4, atol=1e-5)
    assert torch.equal(WEIGHTINGS[name](gram), WEIGHTINGS[name](gram.clone()))  # deterministic, bit for bit


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@EACH
def test_a_cuda_gram_matrix_gives_cuda_coefficients_equal_to_the_cpu_ones(name: str) -> None:
    gram = gram_of(GRADIENTS["four"]).float()
    on_gpu = WEIGHTINGS[name](gram.cuda())
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), WEIGHTINGS[name](gram))


@settings(max_examples=30, deadline=None)
@given(
    tasks=st.integers(1, 4),
    width=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    zeros=st.sets(st.integers(0, 3), max_size=3),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    collinear=st.sampled_from([None, 2.0, -0.5]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_coefficients_are_finite_and_zero_rows_get_zero_on_any_gradients(
    tasks: int, width: int, seed: int, zeros: set[int], scale: float, collinear: float | None, dtype: torch.dtype
) -> None:
    grads = scale * torch.randn(tasks, width, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    if collinear is not None and tasks > 1:  # the last gradient a multiple of the first (opposite when negative)
        grads[-1] = collinear * grads[0]
    grads[[row for row in zeros if row < tasks]] = 0.0
    gram = gram_of(grads)
    for name, weighting in WEIGHTINGS.items():
        ours = weighting(gram)
        assert ours.shape == (tasks,), name
        assert bool(torch.isfinite(ours).all()), (name, ours)
        assert all(ours[row].item() == 0.0 for row in zeros if row < tasks), (name, ours)


# ------------------------------------------------------------------------------------------------ refusals
@EACH
def test_a_gram_matrix_that_is_not_square_finite_and_floating_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=r"square \(T, T\) matrix"):
        WEIGHTINGS[name](torch.zeros(2, 3))
    with pytest.raises(ConfigError, match="non-finite"):
        WEIGHTINGS[name](torch.tensor([[1.0, math.nan], [math.nan, 1.0]]))
    with pytest.raises(ConfigError, match="floating-point"):
        WEIGHTINGS[name](torch.eye(2, dtype=torch.int64))


def test_bad_options_are_refused_with_the_argument_named() -> None:
    with pytest.raises(ConfigError, match="`c` of cagrad_weights"):
        cagrad_weights(torch.eye(2), c=-1.0)
    with pytest.raises(ConfigError, match="`ridge` of nash_mtl_weights"):
        nash_mtl_weights(torch.eye(2), ridge=math.inf)
    opposite = gram_of(DEGENERATE["opposite g, -g"][0])
    with pytest.raises(ConfigError, match=r"unbounded below\. Use ridge > 0"):
        nash_mtl_weights(opposite, ridge=0.0)
    with pytest.raises(ConfigError, match="not both"):
        pcgrad_weights(torch.eye(2), torch.Generator(), orders=[[1], [0]])
    with pytest.raises(ConfigError, match="one visiting order per task"):
        pcgrad_weights(torch.eye(2), orders=[[1]])


def test_the_functional_namespace_is_reachable_from_the_multitask_package() -> None:
    assert functional.mgda_weights is mgda_weights
    assert set(functional.__all__) >= {
        "mgda_weights",
        "imtl_g_weights",
        "aligned_mtl_weights",
        "cagrad_weights",
        "nash_mtl_weights",
        "upgrad_weights",
        "pcgrad_weights",
    }
