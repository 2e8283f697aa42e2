"""Users who answer queries: simulated people with a hidden reward, and people behind a callback.

A simulated user's answers are reproducible from its seed: it owns a
``torch.Generator`` and draws nothing from global state.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from papa_bayes.checks import (
    MAX_SEED, _shown, check_float, check_generator, check_int, check_real_tensor, implements, plain_array,
)
from papa_bayes.data import PreferenceData, _as_tensor
from papa_bayes.exceptions import InputDataError
from papa_bayes.models.likelihoods import check_link, comparison_log_probs, log_cdf

__all__ = [
    "User",
    "SimulatedUser",
    "CallbackUser",
    "RandomFourierUtility",
    "random_unit_vector",
    "random_gp_utility",
    "winner_first",
    "random_pairs",
    "simulate_comparisons",
    "simulate_ratings",
]


def random_unit_vector(d: int, *, generator: torch.Generator) -> Tensor:
    """A direction uniform on the unit sphere in `d` dimensions (APReL's w*)."""
    check_int("d", d)
    check_generator("generator", generator)
    w = torch.randn(d, generator=generator, dtype=torch.float64)
    return w / w.norm()


class RandomFourierUtility:
    """A draw from a GP with an RBF (squared-exponential) kernel, as a function of features.

    Random Fourier features (Rahimi & Recht 2007): ``u(x) = sqrt(2 sigma^2 / M) *
    sum_m a_m cos(omega_m . x / lengthscale + b_m)`` with ``a ~ N(0, 1)``,
    ``omega ~ N(0, I)``, ``b ~ U(0, 2 pi)``; as M grows the law of ``u`` tends to
    GP(0, sigma^2 exp(-|x - x'|^2 / (2 lengthscale^2))). The function is fixed once
    drawn, so a user holding it answers consistently about any item.

    Args:
        d: feature dimension.
        lengthscale: RBF lengthscale (one number or `d`).
        outputscale: kernel variance sigma^2.
        num_features: M.
        generator: the source of the draw.
    """

    def __init__(
        self, d: int, *, lengthscale: float | Tensor = 1.0, outputscale: float = 1.0, num_features: int = 1024,
        generator: torch.Generator,
    ) -> None:
        d = check_int("d", d)
        num_features = check_int("num_features", num_features)
        check_generator("generator", generator)
        ls = check_real_tensor("lengthscale", lengthscale, "one number or `d` numbers")
        if ls.dim() > 1 or ls.numel() not in (1, d):
            raise InputDataError("lengthscale", f"one number or {d} numbers", tuple(ls.shape))
        ls = ls.expand(d)
        outputscale = check_float("outputscale", outputscale, strict=True)
        if not bool(((ls > 0) & torch.isfinite(ls)).all()):
            raise InputDataError("lengthscale / outputscale", "positive finite numbers", (lengthscale, outputscale))
        self.d = d
        self.omega = torch.randn(num_features, d, generator=generator, dtype=torch.float64) / ls
        self.phase = 2 * math.pi * torch.rand(num_features, generator=generator, dtype=torch.float64)
        self.weights = torch.randn(num_features, generator=generator, dtype=torch.float64)
        self.scale = math.sqrt(2.0 * outputscale / num_features)

    def __call__(self, x: Tensor) -> Tensor:
        """Utility of `n x d` features: `n`."""
        x = check_real_tensor("x", x, f"`n x {self.d}` features")
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if x.dim() != 2 or x.shape[-1] != self.d:
            raise InputDataError("x", f"shape `n x {self.d}`", tuple(x.shape))
        # The draw lives on the CPU; items on a GPU are answered there (a CPU/CUDA matmul raised).
        omega, phase, weights = (t.to(x.device) for t in (self.omega, self.phase, self.weights))
        return self.scale * torch.cos(x @ omega.T + phase) @ weights

    def __repr__(self) -> str:
        return f"RandomFourierUtility(d={self.d}, num_features={self.weights.numel()})"


def random_gp_utility(
    d: int, *, lengthscale: float | Tensor = 1.0, outputscale: float = 1.0, num_features: int = 1024,
    generator: torch.Generator,
) -> RandomFourierUtility:
    """A GP-draw utility (RBF kernel) for :class:`SimulatedUser`; see :class:`RandomFourierUtility`."""
    return RandomFourierUtility(
        d, lengthscale=lengthscale, outputscale=outputscale, num_features=num_features, generator=generator
    )


def winner_first(pairs: Tensor, first_won: Tensor) -> Tensor:
    """Order `m x 2` shown pairs winner first (PreferenceData's convention), given `m` bool answers.

    One pair may come as a `2` vector. Indices and answers are read as PreferenceData
    reads its ``comparisons`` and ``ties``: float indices and answers other than
    bools or 0/1 raise :class:`~papa_bayes.exceptions.InputDataError`.
    """
    pairs = _as_tensor("pairs", pairs, torch.long)
    if pairs.numel() == 0 or pairs.shape == (2,):
        pairs = pairs.reshape(-1, 2)
    if pairs.dim() != 2 or pairs.shape[-1] != 2:  # a `2 x m` array was read as pairs of other items, silently
        raise InputDataError("pairs", "`m x 2` integer item indices", tuple(pairs.shape))
    first_won = _as_tensor("first_won", first_won, torch.bool).reshape(-1)
    if first_won.shape[0] != pairs.shape[0]:
        raise InputDataError("first_won", f"{pairs.shape[0]} answers, one per pair", first_won.shape[0])
    return torch.where(first_won.unsqueeze(-1), pairs, pairs.flip(-1))


@runtime_checkable
class User(Protocol):
    """Who answers queries: :class:`SimulatedUser`, :class:`CallbackUser`, a person at
    a terminal (:class:`~papa_bayes.labeling.TerminalUser`), or any object with these
    methods (``isinstance(obj, User)`` checks that it has both). A session needs only
    the one its query type asks; a subclass that leaves one out is refused for it
    before anything is stored."""

    def compare(self, first: Tensor, second: Tensor) -> tuple[Tensor, Tensor]:
        """Answer `n` pairwise queries: ``first[i]`` or ``second[i]`` (`n x ...` items each)?

        Returns:
            (``first_won`` `n` bool, ``tie`` `n` bool); where ``tie`` is True,
            ``first_won`` is not read (a tie's order carries nothing).
        """
        raise NotImplementedError(f"{type(self).__name__} answers no pairwise queries (it has no compare())")

    def rate(self, x: Tensor) -> Tensor:
        """Answer `n` like/dislike queries on `n x ...` items: `n` long, +1 like / -1 dislike."""
        raise NotImplementedError(f"{type(self).__name__} answers no like/dislike queries (it has no rate())")


class SimulatedUser(User):
    """A person with a hidden utility who answers with noise.

    P(a preferred to b) = link(rationality * (u(a) - u(b))); with ``tie_margin`` > 0
    ties follow Davidson (logit, nu = tie_margin) or Glenn-David (probit,
    tau = tie_margin). Like/dislike: P(like) = link(rationality * (u(x) - threshold)).

    Args:
        utility: a `d` weight vector (linear utility; a tensor, NumPy array or list)
            or any callable mapping `n x ...` inputs (features or images) to `n` utilities.
        link: ``"logit"`` or ``"probit"``.
        rationality: inverse noise (a number, or a 0-d tensor or array); ``math.inf`` answers without error.
        tie_margin: 0 for strict answers.
        threshold: like threshold on the utility scale.
        seed: seeds the user's own generator (a non-negative integer).

    :meth:`compare` and :meth:`rate` read their items as every :class:`User` does, as
    `n x ...` batches: a 1-D tensor is `n` single-number items (as :class:`CallbackUser`
    calls its function on each number), never one item of `d` features; one item is
    `1 x d`. With `d` > 1 weights or GP draw (:meth:`from_gp_draw`) a 1-D batch is
    therefore refused, and another callable utility must give one utility per item.
    Items may sit on a GPU; the answers are drawn on the CPU from the user's generator,
    so they are the same on any device.
    """

    def __init__(
        self,
        utility: Tensor | Callable[[Tensor], Tensor],
        *,
        link: str = "logit",
        rationality: float = 1.0,
        tie_margin: float = 0.0,
        threshold: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.link = check_link(link)
        # math.inf: a noiseless user; a 0-d tensor or array of inf too, as check_float takes them for finite values
        infinite = isinstance(rationality, numbers.Real) and rationality == math.inf
        if not infinite and isinstance(rationality, (Tensor, np.ndarray)) and rationality.ndim == 0 \
                and (rationality.dtype.is_floating_point if isinstance(rationality, Tensor)
                     else rationality.dtype.kind == "f"):
            infinite = float(rationality) == math.inf
        if not infinite:
            check_float("rationality", rationality, strict=True,
                        expected="a positive number (math.inf for a noiseless user)")
        tie_margin = check_float("tie_margin", tie_margin)
        threshold = check_float("threshold", threshold, minimum=-math.inf)
        seed = check_int("seed", seed, minimum=0, maximum=MAX_SEED)  # torch's range of seeds
        self.weights = None
        numpy_array = type(utility).__module__ == "numpy" and not callable(utility)
        if isinstance(utility, (Tensor, list, tuple)) or numpy_array:
            self.weights = check_real_tensor("utility", utility, "a `d` weight vector of real numbers or a callable")
            if self.weights.dim() != 1 or self.weights.numel() == 0:
                raise InputDataError("utility", "a non-empty `d` weight vector or a callable",
                                     tuple(self.weights.shape))
            if not bool(torch.isfinite(self.weights).all()):
                raise InputDataError("utility", "finite weights", self.weights.tolist())
            self._utility = self._linear
        elif callable(utility):
            self._utility = utility
        else:
            raise InputDataError("utility", "a `d` weight vector or a callable", type(utility).__name__)
        # A utility of known feature width (weights, a GP draw) reads batches alike: a 1-D batch is `n` items at d=1.
        self._num_features = self.weights.shape[0] if self.weights is not None else (
            utility.d if isinstance(utility, RandomFourierUtility) else None)
        self.rationality = math.inf if infinite else float(rationality)
        self.tie_margin = float(tie_margin)
        self.threshold = float(threshold)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def from_gp_draw(
        cls, d: int, *, lengthscale: float | Tensor = 1.0, outputscale: float = 1.0, num_features: int = 1024,
        seed: int = 0, **kwargs: Any,
    ) -> SimulatedUser:
        """A user whose hidden utility is a GP draw (RBF kernel), both drawn from ``seed``.

        ``kwargs`` (link, rationality, tie_margin, threshold) go to the constructor.
        """
        seed = check_int("seed", seed, minimum=0, maximum=MAX_SEED)
        gen = torch.Generator().manual_seed((seed + 104729) % 2**64)  # the draw's stream differs from the answers'
        utility = random_gp_utility(d, lengthscale=lengthscale, outputscale=outputscale, num_features=num_features,
                                    generator=gen)
        return cls(utility, seed=seed, **kwargs)

    def reset(self) -> None:
        """Restart the answer stream: the same queries then get the same answers again."""
        self.generator.manual_seed(self.seed)

    def _linear(self, x: Tensor) -> Tensor:
        d = self.weights.shape[0]
        x = check_real_tensor("x", x, f"`n x {d}` features")
        if x.dim() not in (1, 2) or x.shape[-1] != d:
            raise InputDataError("x", f"shape `n x {d}` (the weights' dimension)", tuple(x.shape))
        return x @ self.weights.to(x.device)  # items on a GPU: a CPU/CUDA matmul raised

    def utility(self, x: Tensor) -> Tensor:
        """The hidden utility: `n`.

        Raises:
            InputDataError: features of another dimension than the weights, a utility
                that is not finite (NaN features, a callable returning NaN), or a callable
                returning anything but real numbers (None, text, complex numbers; bools read as 0/1).
        """
        out = self._utility(x)
        expected = "real numbers, one utility per item (a `n` tensor)"
        if not isinstance(out, Tensor):
            try:  # Python floats parsed in double directly (through float32 they lose digits a near tie needs)
                # (NumPy arrays keep their dtype: a complex one is refused below, not cut to its real part)
                out = torch.as_tensor(plain_array(out), dtype=None if hasattr(out, "dtype") else torch.float64)
            except (TypeError, ValueError, RuntimeError):  # None, text, objects: torch's bare TypeError
                raise InputDataError("utility", expected, _shown(out)) from None
        if out.is_complex():  # its imaginary part was dropped, with a mere warning
            raise InputDataError("utility", expected, f"a tensor of {out.dtype}")
        u = out.detach().to(torch.float64).reshape(-1)
        n = x.shape[0] if getattr(x, "ndim", 0) >= 2 else None  # 1-D: one item, or a callable's own convention
        if n is not None and u.numel() != n:
            raise InputDataError("utility", f"{n} utilities, one per item of the `{n} x ...` input",
                                 f"{u.numel()} values")
        if not bool(torch.isfinite(u).all()):
            bad = int(torch.nonzero(~torch.isfinite(u))[0])
            raise InputDataError("x", "items with a finite utility", f"{float(u[bad])} at item {bad}")
        return u

    def _batch_utility(self, name: str, x: Any) -> Tensor:
        """`n` utilities, on the CPU, of a batch of `n x ...` items read as the User protocol reads it.

        A 1-D batch is `n` single-number items, as :class:`CallbackUser` reads it: read as one
        item of `d` features (as :meth:`utility` reads it), the same queries got one answer here
        and `d` there.
        """
        if self._num_features is not None:
            d = self._num_features
            x = check_real_tensor(name, x, f"a batch of `n x {d}` features")
            if x.dim() == 1:
                if d != 1:
                    raise InputDataError(name, f"a batch of `n x {d}` items (one item as `1 x {d}`, e.g. "
                                               "x.unsqueeze(0); a 1-D batch is `n` single-number items)",
                                         tuple(x.shape))
                x = x.unsqueeze(-1)
            if x.dim() != 2 or x.shape[-1] != d:  # named here: the weights' own check names its argument x
                raise InputDataError(name, f"a batch of `n x {d}` items", tuple(x.shape))
        u = self.utility(x)
        if getattr(x, "ndim", None) == 1 and u.numel() != x.shape[0]:
            raise InputDataError("utility", f"{x.shape[0]} utilities, one per item of the 1-D batch (`n` "
                                            "single-number items; one item of `d` features is `1 x d`)",
                                 f"{u.numel()} values")
        return u.cpu()  # the answers are drawn from the user's CPU generator: the same on every device

    def outcome_probabilities(self, first: Tensor, second: Tensor) -> Tensor:
        """`n x 2` (first, second) or `n x 3` (..., tie) answer probabilities for `n` items each (`n x ...`)."""
        u_first, u_second = self._batch_utility("first", first), self._batch_utility("second", second)
        if u_first.shape != u_second.shape:
            raise InputDataError("second", f"{u_first.shape[0]} items, one per item of first", u_second.shape[0])
        diff = u_first - u_second
        if math.isinf(self.rationality):
            scaled = torch.sign(diff) * 1e6
        else:  # (a rationality near 1e308 overflowed to inf: NaN probabilities; past 1e6 the answer is sure anyway)
            scaled = (self.rationality * diff).clamp(-1e6, 1e6)
        tie = torch.tensor(self.tie_margin, dtype=torch.float64) if self.tie_margin > 0 else None
        return comparison_log_probs(scaled, self.link, tie).exp()

    def compare(self, first: Tensor, second: Tensor) -> tuple[Tensor, Tensor]:
        probs = self.outcome_probabilities(first, second)
        outcome = torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)
        return outcome == 0, outcome == 2

    def rate(self, x: Tensor) -> Tensor:
        margin = self._batch_utility("x", x) - self.threshold
        # Noiseless: link(inf * margin), and a coin flip at the threshold itself, as link(r * 0) = 1/2 for every r.
        p = (torch.sign(margin) + 1) / 2 if math.isinf(self.rationality) else log_cdf(self.rationality * margin,
                                                                                     self.link).exp()
        like = torch.rand(p.shape, generator=self.generator, dtype=torch.float64) < p
        return torch.where(like, 1, -1)

    def __repr__(self) -> str:
        return (f"SimulatedUser(link={self.link!r}, rationality={self.rationality}, tie_margin={self.tie_margin}, "
                f"seed={self.seed})")


def _callback_answer(ans: Any, expected: str) -> Any:
    """A callback's answer as a plain Python value: a one-number tensor or array gives its number.

    Bools of every kind are refused: True == 1 would read as the second item (or a like); so are
    complex numbers, as 1 + 0j == 1 would.
    """
    if isinstance(ans, (Tensor, np.ndarray, np.generic)):
        size = ans.numel() if isinstance(ans, Tensor) else ans.size
        if size != 1:
            raise InputDataError("answer", f"{expected}, one answer per call",
                                 f"{type(ans).__name__} of shape {tuple(ans.shape)}")
        if ans.dtype in (torch.bool, np.bool_):
            raise InputDataError("answer", f"{expected}, not a bool", ans)
        ans = ans.item()
    if isinstance(ans, bool):
        raise InputDataError("answer", f"{expected}, not a bool", ans)
    if isinstance(ans, numbers.Complex) and not isinstance(ans, numbers.Real):
        raise InputDataError("answer", f"{expected}, not a complex number", ans)
    return ans


def _check_batch(name: str, items: Any) -> None:
    """`n` items to iterate over, one query each (a str would be read character by character)."""
    if (isinstance(items, Tensor) and items.dim() == 0) or not hasattr(items, "__len__") \
            or isinstance(items, (str, bytes)):
        raise InputDataError(name, "a batch of `n` items (`n x ...`)", tuple(items.shape) if isinstance(items, Tensor)
                             else type(items).__name__)


class CallbackUser(User):
    """A person answering through code.

    Args:
        compare_fn: ``(first, second) -> 0`` (first preferred), ``1`` (second) or
            ``"tie"``/``2``, called once per query with the two items.
        rate_fn: ``(item) -> +1 / -1``.

    An answer may be a Python, NumPy or one-element torch number; a bool (of any
    kind), a complex number or anything else raises
    :class:`~papa_bayes.exceptions.InputDataError`. The items are `n x ...` batches,
    each function called on ``first[i]`` (a 1-D batch: on each number), as
    :class:`SimulatedUser` reads them.
    """

    def __init__(
        self, compare_fn: Callable[[Any, Any], Any] | None = None, rate_fn: Callable[[Any], Any] | None = None
    ) -> None:
        for name, fn in (("compare_fn", compare_fn), ("rate_fn", rate_fn)):
            if fn is not None and not callable(fn):
                raise InputDataError(name, "a callable or None", type(fn).__name__)
        self.compare_fn = compare_fn
        self.rate_fn = rate_fn

    def compare(self, first: Tensor, second: Tensor) -> tuple[Tensor, Tensor]:
        if self.compare_fn is None:
            raise InputDataError("compare_fn", "a callable for pairwise queries", None)
        _check_batch("first", first)
        _check_batch("second", second)
        if len(first) != len(second):
            raise InputDataError("second", f"{len(first)} items, one per item of first", len(second))
        won, tie = [], []
        for a, b in zip(first, second):
            ans = _callback_answer(self.compare_fn(a, b), "0 (first), 1 (second) or 'tie'")
            if ans in ("tie", 2):
                won.append(True)
                tie.append(True)
            elif ans in (0, 1):
                won.append(ans == 0)
                tie.append(False)
            else:
                raise InputDataError("answer", "0 (first), 1 (second) or 'tie'", _shown(ans))
        return torch.tensor(won, dtype=torch.bool), torch.tensor(tie, dtype=torch.bool)

    def rate(self, x: Tensor) -> Tensor:
        if self.rate_fn is None:
            raise InputDataError("rate_fn", "a callable for like/dislike queries", None)
        _check_batch("x", x)
        out = []
        for item in x:
            ans = _callback_answer(self.rate_fn(item), "+1 (like) or -1 (dislike)")
            if ans not in (1, -1):
                raise InputDataError("answer", "+1 (like) or -1 (dislike)", _shown(ans))
            out.append(int(ans))
        return torch.tensor(out, dtype=torch.long)

    def __repr__(self) -> str:
        def name(fn: Any) -> str | None:
            return None if fn is None else getattr(fn, "__qualname__", type(fn).__name__)

        return f"CallbackUser(compare_fn={name(self.compare_fn)}, rate_fn={name(self.rate_fn)})"


def _check_user(user: Any) -> None:
    if not (implements(user, "compare", User) and implements(user, "rate", User)):
        raise InputDataError("user", "a SimulatedUser or CallbackUser (with compare and rate)", type(user).__name__)


def _items(items: Any) -> Tensor:
    """`n x ...` items: a tensor as it is, anything else as a float64 tensor (read as PreferenceData reads its
    items: a bool among the numbers is refused, not read as 1.0)."""
    t = items if isinstance(items, Tensor) else _as_tensor("items", items, torch.float64)
    if t.dim() < 1:
        raise InputDataError("items", "an `n x d` tensor of items", tuple(t.shape))
    return t


def random_pairs(n: int, m: int, *, generator: torch.Generator) -> Tensor:
    """`m x 2` pairs of distinct indices of `n` items, uniform over ordered pairs (two ``randint`` draws)."""
    n, m = check_int("n", n, minimum=2), check_int("m", m, minimum=0)
    check_generator("generator", generator)
    a = torch.randint(0, n, (m,), generator=generator)
    b = (a + torch.randint(1, n, (m,), generator=generator)) % n  # never a == b
    return torch.stack([a, b], -1)


def simulate_comparisons(
    user: SimulatedUser, items: Tensor, num_comparisons: int, *, generator: torch.Generator
) -> PreferenceData:
    """Random pairs of ``items`` (`n x d`) answered by ``user``: winner-first data."""
    _check_user(user)
    items = _items(items)
    check_generator("generator", generator)
    n = items.shape[0]
    if n < 2:
        raise InputDataError("items", "at least 2 items", n)
    check_int("num_comparisons", num_comparisons, minimum=0)
    shown = random_pairs(n, num_comparisons, generator=generator)
    won, tie = user.compare(items[shown[:, 0]], items[shown[:, 1]])
    comps = winner_first(shown, won)
    return PreferenceData(items=items, comparisons=comps, ties=tie)


def simulate_ratings(
    user: SimulatedUser, items: Tensor, num_ratings: int, *, generator: torch.Generator
) -> PreferenceData:
    """Random items rated like/dislike by ``user``."""
    _check_user(user)
    items = _items(items)
    check_generator("generator", generator)
    if items.shape[0] < 1:
        raise InputDataError("items", "at least 1 item", items.shape[0])
    check_int("num_ratings", num_ratings, minimum=0)
    idx = torch.randint(0, items.shape[0], (num_ratings,), generator=generator)
    return PreferenceData(items=items, ratings=torch.stack([idx, user.rate(items[idx])], -1))
