"""The online loop: ask, store, update, re-steer; resumable from its store.

Each round: draw a candidate pool (steered by the current posterior, plus an
exploration share from the unsteered source), compute features, select the query by
the acquisition strategy, store the items and the query, ask the user, store the
answer (committed before anything else), update the posterior online, record the
round's metrics and RNG state; every ``finetune_every`` rounds, if asked, the
source amortizes the steering into fine-tuned weights (saved beside the store).
``PreferenceSession.resume(path, ...)`` refits the posterior to the stored answers
and continues the stored random streams where the store stopped; a query asked but
not answered before a crash is asked again first. The refit is a fresh fit, not a
replay of the running session's online updates: for Laplace models they agree to
about six decimals of an acquisition value (a near tie may pick another query),
for GP models less closely (their hyperparameters move only at full refits).

Several raters share one store: each runs its own session (``rater=``) with its own
posterior. With a :class:`~papa_bayes.models.HierarchicalLinearReward` the raters'
answers are pooled: the population posterior of the *other* raters' answers becomes
this rater's prior (:meth:`~papa_bayes.inference.PyroPosterior.new_rater_model`), so a
new rater starts from what the others taught.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from papa_bayes.acquisition import exposure_diversity, select_queries, weight_entropy_bits
from papa_bayes.acquisition.selection import check_strategy
from papa_bayes.checks import check_bool, check_float, check_int, implements, plain_array, renamed_option
from papa_bayes.data import PreferenceData
from papa_bayes.exceptions import InputDataError, StoreError
from papa_bayes.inference import RewardPosterior, fit, prior_posterior
from papa_bayes.locks import lock_rater
from papa_bayes.models import HierarchicalLinearReward, LinearReward, PairwiseGPReward, PyroRewardModel
from papa_bayes.session_resume import check_resumed, model_from_record, model_record
from papa_bayes.sources import Candidates, CandidateSource, FeaturePool
from papa_bayes.store import PreferenceStore, StoredQuery, check_id
from papa_bayes.users import CallbackUser, User

# Candidates, CandidateSource and FeaturePool live in papa_bayes.sources; re-exported as what a session takes.
__all__ = ["Candidates", "CandidateSource", "FeaturePool", "PreferenceSession", "RoundRecord", "QUERY_TYPES"]

QUERY_TYPES = ("pair", "rating")
DEFAULT_POOL_SIZE = 32  # candidates per round unless a session says otherwise


@dataclass
class RoundRecord:
    """What one round did and measured."""

    round: int
    query: StoredQuery
    metrics: dict[str, float] = field(default_factory=dict)


def _entropy_proxy(post: RewardPosterior, features: Tensor, counts: Tensor | None = None) -> float:
    """Posterior entropy proxy: mean log sd of the utility over the pool (nats).

    ``counts``: how many items each (distinct) row of ``features`` stands for, a weighted mean; None: 1 each.
    """
    sd = post.utility(features).std(0).clamp(min=1e-12)
    if counts is None:
        return float(sd.log().mean())
    return float((counts * sd.log()).sum() / counts.sum())


class _DistinctItems:
    """The distinct feature rows of a store's items, and how many stored items each stands for.

    A session stores every pool it draws (`pool_size` items a round), so a :class:`FeaturePool` of
    `N` items is stored again and again: 96,000 rows after 3,000 rounds of 32 for at most `N`
    distinct ones. The round's ``posterior_log_sd`` took `num_draws` utilities of every stored row
    (a `256 x 96,000` matrix, 200 MB, each round); over the distinct rows, weighted by their
    counts, it is the same mean. Updated with the rows stored since the last round only.
    """

    def __init__(self) -> None:
        self.index: dict[bytes, int] = {}
        self.rows: list[Tensor] = []
        self.counts: list[int] = []
        self.read = 0  # stored rows counted so far
        self._stacked: tuple[Tensor, Tensor] | None = None

    def update(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """From the store's `n x d` features: the `u x d` distinct rows (in order of first storage) and `u` counts."""
        if features.shape[0] < self.read:  # (not the store these rows were counted in): counted afresh
            self.__init__()
        for row in features[self.read :]:
            key = row.numpy().tobytes()
            j = self.index.get(key)
            if j is None:
                self.index[key] = len(self.rows)
                self.rows.append(row.clone())
                self.counts.append(1)
            else:
                self.counts[j] += 1
        if self._stacked is None or self.read != features.shape[0]:
            rows = torch.stack(self.rows) if self.rows else features[:0]
            self._stacked = (rows, torch.tensor(self.counts, dtype=features.dtype))
        self.read = features.shape[0]
        return self._stacked


def _one_value(value: Any, allowed: tuple[float, ...]) -> float | None:
    """The single value of a user's answer when it is one of ``allowed`` (bools read as 0/1), else None."""
    try:
        t = torch.as_tensor(plain_array(value))
    except (TypeError, ValueError, RuntimeError):
        return None
    if t.numel() != 1 or t.is_complex():
        return None
    v = float(t.reshape(()))
    return v if v in allowed else None


def _shown_items(data: PreferenceData) -> list[int]:
    """The items of every answered query in ``data`` (a pair's two, a rating's one): what the exposure metrics count.

    Read from the stored answers, not kept beside them: an interrupt between an answer's write and
    a running list's update left that answer's items out of every later round's metrics.
    """
    return data.comparisons.reshape(-1).tolist() + data.ratings[:, 0].tolist()


def _cold_start_key(session: PreferenceSession, others: PreferenceData) -> str:
    """What a cold-start prior is learned from: the model, seed, draws and the others' answers and their items'
    features (a digest; not the items no answer names, as this rater's own pools, which the fit never reads)."""
    digest = hashlib.sha256()
    for t in (others.items[others.comparisons], others.items[others.ratings[:, 0]], others.comparisons, others.ties,
              others.ratings, others.comparison_rater, others.rating_rater):
        digest.update(b"-" if t is None else t.contiguous().numpy().tobytes() + str(tuple(t.shape)).encode())
    record = json.dumps([model_record(session.model), repr(session.model), session.seed, session.num_draws],
                        sort_keys=True, default=str)
    return hashlib.sha256(record.encode()).hexdigest()[:32] + digest.hexdigest()[:32]


def _shown_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# The sessions of this process that ask, by (store, rater). The rater's lock is held per process (``papa-bayes
# label`` takes it again for its session), so it let a second session of one rater in one process begin
# beside the first: it overwrote the first's stored settings (a resume then continued the first's questions
# with the second's seed) and both asked round 0. The newer one asks; the older one, left open (a notebook
# cell run again), refuses to step. Weak: a session dropped unclosed no longer counts.
_ASKING: weakref.WeakValueDictionary[tuple[Path, int], PreferenceSession] = weakref.WeakValueDictionary()
_ASKING_GUARD = threading.Lock()


def _take_over_rater(session: PreferenceSession) -> None:
    """Make ``session`` the one of its store and rater that asks in this process (the older one stops)."""
    key = (Path(session.store.path).resolve(), session.rater)
    with _ASKING_GUARD:
        older = _ASKING.get(key)
        if older is not None and older is not session:
            older._superseded = True
        _ASKING[key] = session


class PreferenceSession:
    """An online preference-elicitation session backed by a durable store.

    Args:
        store: path of the SQLite store (created when missing; a session of ``rater``
            it already holds must be continued with :meth:`resume`), or an open
            :class:`~papa_bayes.store.PreferenceStore` (which :meth:`close` leaves open).
        source: a :class:`CandidateSource` (e.g. ``DiffusionCandidates`` or
            :class:`FeaturePool`).
        user: a :class:`~papa_bayes.users.User`, which answers queries:
            ``compare(first, second) -> (first_won, tie)`` and/or ``rate(x) -> +1/-1``,
            on images (when the source has them) or features.
        model: the reward model (default ``LinearReward(rationality=1.0)``: a
            Gaussian prior with the rationality fixed, so an update is one Newton
            solve, without the rationality grid). A
            ``HierarchicalLinearReward`` pools the raters of the store (see above).
        query_type: ``"pair"`` or ``"rating"`` (like/dislike).
        strategy: an acquisition strategy of :func:`~papa_bayes.acquisition.select_queries`.
        pool_size: candidates per round (>= 2). None (default): 32, or all the items of a
            smaller pool (a source's ``max_candidates``); a larger number is refused.
        exploration: share of each pool drawn from the unsteered source, in [0, 1]; on average
            where ``exploration * pool_size`` is not whole (rounded up or down at random).
        refit_every: refit from scratch every this many rounds (None: online only).
        finetune_every: every this many rounds, fine-tune the source's model on the
            current posterior's steering (the source needs a ``finetune`` method, as
            ``DiffusionCandidates`` has); the weights are saved in
            ``<store>_finetuned/rater<r>`` and reloaded on resume. None: never.
        finetune_options: keyword arguments of the source's ``finetune`` (e.g.
            ``steps``, ``num_samples`` of ``distill_guidance``).
        num_draws: posterior draws kept (at least 2).
        rater: the rater id of this session's answers (several raters may share a
            store, one session each: another process's session of the rater is refused;
            a newer one in this process, begun or resumed, stops this one's :meth:`step`).
        seed: seeds every random choice of the session (an integer >= 0).
        on_round: optional callback ``(session, record)`` after each round.
    """

    def __init__(
        self,
        store: str | Path | PreferenceStore,
        source: CandidateSource,
        user: User,
        *,
        model: Any | None = None,
        query_type: str = "pair",
        strategy: str = "region",
        pool_size: int | None = None,
        exploration: float = 0.25,
        refit_every: int | None = None,
        finetune_every: int | None = None,
        finetune_options: dict[str, Any] | None = None,
        num_draws: int = 256,
        rater: int = 0,
        seed: int = 0,
        on_round: Any | None = None,
        _resuming: bool = False,
    ) -> None:
        if query_type not in QUERY_TYPES:
            raise InputDataError("query_type", f"one of {QUERY_TYPES}", query_type)
        strategy = check_strategy(strategy, query_type)  # aliases resolved ("bald" is stored as "eig")
        exploration = check_float("exploration", exploration, maximum=1.0, inclusive_maximum=True)
        max_candidates = getattr(source, "max_candidates", None)  # a FeaturePool hands out each item once a round
        if pool_size is None:
            pool_size = min(DEFAULT_POOL_SIZE, max_candidates or DEFAULT_POOL_SIZE)
        pool_size = check_int("pool_size", pool_size, minimum=2)
        # Two at least: each round's metrics read the draws' spread (one draw has no standard deviation).
        num_draws = check_int("num_draws", num_draws, minimum=2)
        seed = check_int("seed", seed, minimum=0, maximum=2**32 - 1)  # the fits' range (torch's seeds)
        refit_every, finetune_every = (None if every is None else check_int(name, every, expected="a positive integer or None")
                                       for name, every in (("refit_every", refit_every), ("finetune_every", finetune_every)))
        if finetune_options is not None and not isinstance(finetune_options, dict):
            raise InputDataError("finetune_options", "None or a dict of fine-tuning options",
                                 type(finetune_options).__name__)
        try:  # stored with the session (its config), so checked before the store is opened
            json.dumps(finetune_options)
        except (TypeError, ValueError) as err:
            raise InputDataError("finetune_options", "JSON-serializable values (they are stored with the session)",
                                 str(err)) from None
        if finetune_every is not None and not callable(getattr(source, "finetune", None)):
            raise InputDataError("source", "a source with a finetune() method (e.g. DiffusionCandidates) "
                                 "when finetune_every is set", type(source).__name__)
        rater = check_id("rater", rater)  # the store's ids and the lock file's byte offsets are signed 64 bits
        for name in ("candidates", "recommend", "config"):
            if not implements(source, name, CandidateSource):
                raise InputDataError("source", f"a CandidateSource with a {name}() method (e.g. FeaturePool or "
                                     "DiffusionCandidates)", type(source).__name__)
        if not _resuming and max_candidates is not None and pool_size > max_candidates:
            raise InputDataError("pool_size", f"at most the source's {max_candidates} candidates (a pool's items)",
                                 pool_size)
        method = "compare" if query_type == "pair" else "rate"
        if not implements(user, method, User):  # before anything is stored
            raise InputDataError("user", f"an object with a {method}() method for {query_type!r} queries "
                                 "(e.g. a SimulatedUser or CallbackUser)", type(user).__name__)
        model = model if model is not None else LinearReward(rationality=1.0)
        if query_type == "pair" and getattr(user, "tie_margin", 0.0) > 0 and not getattr(model, "ties", False):
            raise InputDataError("model", "a model with ties=True for a user who ties (tie_margin > 0)", repr(model))
        if query_type == "rating" and isinstance(model, PairwiseGPReward):  # its first fit failed, an answer stored
            raise InputDataError("model", "a model of like/dislike ratings for 'rating' queries (PairwiseGPReward, "
                                 "BoTorch's PairwiseGP, takes only comparisons: use PreferenceGP or LinearReward)",
                                 repr(model))
        if isinstance(user, CallbackUser) and getattr(user, f"{method}_fn") is None:
            raise InputDataError("user", f"a CallbackUser with a {method}_fn for {query_type!r} queries",
                                 f"{method}_fn=None")
        if on_round is not None and not callable(on_round):
            raise InputDataError("on_round", "None or a callable (session, record)", type(on_round).__name__)
        if not isinstance(store, (str, os.PathLike, PreferenceStore)):
            raise InputDataError("store", "a path (str or Path) or a PreferenceStore", type(store).__name__)
        self._owns_store = not isinstance(store, PreferenceStore)  # close() leaves a store it was given open
        self.store = PreferenceStore(store) if self._owns_store else store
        self.rater, self._closed, self._superseded, self._lock = rater, False, False, None
        try:  # one process per rater: another one's answers would take the same rounds
            self._lock = lock_rater(self.store.path, rater)
        except StoreError:
            if self._owns_store:
                self.store.close()
            raise
        problem: Exception | None = None
        try:  # before anything is asked: an answer typed into a read-only store would be lost
            self.store.check_writable()
        except StoreError as err:
            problem = err
        else:  # any query, even one left unanswered by a crash, belongs to a session that only resume() continues
            if not _resuming and self.store.queries(rater=rater):
                problem = StoreError(f"{self.store.path} already holds queries of rater {rater}; continue them "
                                     f"with PreferenceSession.resume(path, ..., rater={rater}).")
            elif self.store.num_features not in (None, getattr(source, "num_features", None)):  # before writing
                problem = InputDataError("source", f"a source of the store's {self.store.num_features} features",
                                         f"{getattr(source, 'num_features', None)} features")
        if problem is not None:
            self._release()
            if self._owns_store:
                self.store.close()
            raise problem
        self.source, self.user = source, user
        self.model = model
        self.finetune_every = finetune_every
        self.finetune_options = dict(finetune_options or {})
        self.query_type, self.strategy = query_type, strategy
        self.pool_size, self.exploration = pool_size, exploration
        self.refit_every, self.num_draws = refit_every, num_draws
        self.seed = seed
        self.on_round = on_round
        self.generator = torch.Generator().manual_seed(self.seed)
        self.round = 0
        # Set before a round's query is stored and cleared once the round is finished: while
        # it is unset, no query of this round is stored, so step() need not read the store.
        self._round_open = False
        # The random state of an open round's start while the store could not say whether its query was
        # stored: rewound to when the next step() finds none, so that it draws the same pool again.
        self._round_start: tuple[Tensor, dict[str, Any] | None] | None = None
        self._posterior: RewardPosterior | None = None
        self._shown: list[int] = []
        self._rater_model_cache: Any | None = None
        self._distinct = _DistinctItems()
        # No item of this round lies below this index (the items stored when the round before ended; 0 when
        # unknown): the search for the items a crash stored for it starts there.
        self._round_items_from = 0
        if not _resuming:
            try:  # (a source whose config() JSON cannot hold): the lock and store go, not kept by the traceback
                self.store.set_config(self.config(), rater=self.rater)
            except BaseException:
                self._release()
                if self._owns_store:
                    self.store.close()
                raise
            _take_over_rater(self)  # its settings replaced those of an older session of this process: that one stops

    # ----------------------------------------------------------- configuration
    def config(self) -> dict[str, Any]:
        """The session's options, JSON-serializable (stored with it; a resumed session checks them)."""
        return {
            "query_type": self.query_type, "strategy": self.strategy, "pool_size": self.pool_size,
            "exploration": self.exploration, "refit_every": self.refit_every, "num_draws": self.num_draws,
            "finetune_every": self.finetune_every, "finetune_options": self.finetune_options,
            "rater": self.rater, "seed": self.seed, "model": repr(self.model),
            "model_record": model_record(self.model), "source": self.source.config(),
        }

    @classmethod
    def resume(cls, path: str | Path, source: CandidateSource, user: User, *, model: Any | None = None,
               on_round: Any | None = None, rater: int | None = None) -> PreferenceSession:
        """Continue the session stored at ``path`` with the same source and user.

        The posterior is refitted from the stored answers, the RNG state of the last
        query (and the source's state, for sources with ``load_state``) restored,
        the last fine-tuned weights reloaded, and a round a crash left unfinished is
        finished first: its query asked again when unanswered, its fine-tune run
        when that round is one of every ``finetune_every``. A
        ``HierarchicalLinearReward`` session's prior is learned again from the other
        raters' answers as the store holds them now (those given since count too); while
        they are the ones it was last learned from, the prior kept in the store is read back
        instead (the same prior: the fit takes a minute with 30 raters' 100 answers each).

        The model and source must be the ones the session began with (the model's
        class and the fields its ``repr`` shows, and the source's ``config()``, are
        stored; a custom model whose ``repr`` names no fields is compared by ``repr``,
        by class when it has no ``repr`` of its own): answers of one model continued
        under another, or items of another pool, would be a different experiment. A
        ``DiffusionCandidates`` source's config holds its base model's fingerprint
        (denoiser config and weights, scheduler, autoencoder, conditioning:
        :func:`papa_bayes.diffusion.candidates.model_fingerprint`), so another diffusion
        model is refused; ``DiffusionCandidates(..., accept_new_conditioning=True)``
        continues with another prompt on purpose.

        Args:
            model: the session's model (default ``LinearReward(rationality=1.0)``, the
                default of a new session).
            rater: whose session to continue (default: the store's first session).

        Raises:
            StoreError: no session (of ``rater``) in the store, or a store this process cannot write.
            InputDataError: a model or source other than the stored session's, or a ``rater`` that is no id.
        """
        if rater is not None:  # before the store is opened, so that a bad id leaves nothing open
            rater = check_id("rater", rater)
        store = PreferenceStore(path, create=False)
        cfg = store.config if rater is None else store.rater_config(rater)
        if cfg is None:
            asked = store.raters()
            store.close()
            what = "session configuration" if rater is None else f"session of rater {rater}"
            held = f"the raters it holds: {', '.join(map(str, asked))}" if asked else "no rater was asked anything"
            raise StoreError(f"{path} holds no {what} ({held}).")
        try:
            session = cls(
                store, source, user, model=model, query_type=cfg["query_type"], strategy=cfg["strategy"],
                pool_size=cfg["pool_size"], exploration=cfg["exploration"], refit_every=cfg["refit_every"],
                finetune_every=cfg.get("finetune_every"), finetune_options=cfg.get("finetune_options"),
                num_draws=cfg["num_draws"], rater=cfg["rater"], seed=cfg["seed"], on_round=on_round, _resuming=True,
            )
        except BaseException:  # e.g. another process holds this rater's session
            store.close()
            raise
        session._owns_store = True
        try:  # a failure here (Ctrl-C while the pending query is asked again, ...) releases the store and lock
            check_resumed(cfg, session)
            _take_over_rater(session)  # accepted: before it finishes an open round
            if session.finetune_every is not None and (session.finetune_path / "unet" / "config.json").is_file():
                source.load_finetuned(session.finetune_path)
            queries = store.queries(rater=session.rater)
            session._refit()  # (and the items shown, from the stored answers)
            if queries:
                last = queries[-1]
                # The RNG state right after the last query was chosen: nothing random
                # happens later in a round, so this continues the stream exactly.
                state = store.query_rng_state(last.id)
                if state is not None:
                    session.generator.set_state(state)
                session.round = last.round
                source_state = store.source_state(session.rater)
                if source_state is not None and callable(getattr(source, "load_state", None)):
                    source.load_state(source_state)
                if last.answer is None or last.round not in store.finished_rounds(session.rater):
                    # Killed while asking, or after the answer was written. The refit above saw every stored answer.
                    session._round_open = True
                    session._complete_open_round(last, refit=False)
                else:
                    session.round = last.round + 1
        except BaseException:
            session.close()
            raise
        return session

    # ----------------------------------------------------------------- state
    @property
    def data(self) -> PreferenceData:
        """This rater's answers over every stored item (no items yet: `0 x d` items of the source)."""
        if self.store.num_items == 0:
            return PreferenceData(items=torch.zeros(0, self.source.num_features, dtype=torch.float64))
        return self.store.preference_data(rater=self.rater)

    @property
    def posterior(self) -> RewardPosterior:
        """The current posterior; before the first round, the prior.

        The prior is not kept: the first round's pool is drawn unsteered, whether
        or not the posterior was looked at.
        """
        return self._posterior if self._posterior is not None else self._prior(self.data)

    @property
    def history(self) -> list[dict[str, Any]]:
        """Per-round metrics as stored.

        ``information_bits``: expected information of the query asked (bits, <= 1 for
        a binary answer); ``realised_information_bits``: the drop in the Gaussian
        entropy of the reward's linear part (:func:`~papa_bayes.acquisition.weight_entropy_bits`)
        that the answer caused (negative when a surprising answer widened the
        posterior); ``posterior_log_sd``: mean log sd of the utility over the items
        seen; ``exposure_entropy_bits`` / ``exposure_coverage``: diversity of what was
        shown; timings in seconds.
        """
        return self.store.rounds(self.rater)

    @property
    def finetune_path(self) -> Path:
        """Folder of this rater's latest fine-tuned weights."""
        path = Path(self.store.path)
        return path.with_name(f"{path.stem}_finetuned") / f"rater{self.rater}"

    @property
    def _rater_model(self) -> Any:
        """The model of this rater's answers (built once the store holds items).

        A hierarchical model is fitted on the other raters' answers in the store;
        its population posterior gives this rater's prior (cold start). Other models
        are used as given.
        """
        if not isinstance(self.model, HierarchicalLinearReward):
            return self.model
        if self._rater_model_cache is None:
            self._rater_model_cache = self._cold_start_model()
        return self._rater_model_cache

    def _cold_start_model(self) -> Any:
        # (no items yet, as before the first round of a new store: the store has no feature dimension, the source has)
        others = self.store.preference_data(exclude_rater=self.rater) if self.store.num_items else self.data
        # Learned once from a set of the others' answers and kept in the store: a resume with the same answers
        # reads it back (the fit took 17 s with 20 raters' 100 answers each at d=8, 80 s with 30, at every resume).
        key = _cold_start_key(self, others)
        kept = self.store.cold_start(self.rater) if others.num_observations else None
        if kept is not None and kept.get("key") == key:
            model = model_from_record(kept.get("model"), LinearReward)
            if model is not None:
                return model
        if others.num_observations == 0:
            population = prior_posterior(self.model, others, num_samples=self.num_draws, seed=self.seed)
        else:
            # Plain Laplace overstates the spread between raters (HierarchicalLinearReward's docstring), and with
            # it the newcomer's prior; the population scale integrated out (nested Laplace) brings it within
            # about 10% of NUTS's (refine_steps=20, used here until 2026-12-04: 1.3-1.8 times); once per set of the
            # others' answers (kept in the store). Its cost grows with the raters and answers: 17 s for 20 raters'
            # 100 answers each (d=8, one thread), 80 s for 30 (nested_draws' conditional fits: 256 proposals,
            # each Hessian 2d + 1 Hessian-vector products over every answer).
            population = fit(self.model, others, method="laplace", num_samples=self.num_draws, seed=self.seed,
                             integrate_scale=True)
        model = population.new_rater_model()
        if others.num_observations and type(model) is LinearReward:
            self.store.set_cold_start(self.rater, {"key": key, "model": model_record(model)})
        return model

    def _fit(self, data: PreferenceData) -> RewardPosterior:
        model = self._rater_model
        # Pyro models: Laplace (fast, exact for the Gaussian prior); GP models: their own default (ELBO).
        method = "laplace" if isinstance(model, PyroRewardModel) else None
        return fit(model, data, method=method, num_samples=self.num_draws, seed=self.seed)

    def _prior(self, data: PreferenceData) -> RewardPosterior:
        model = self._rater_model
        if not isinstance(model, PyroRewardModel):
            # A GP has no posterior before its first answer (its kernel is fitted to answers):
            # the first query is chosen under a linear reward's Gaussian prior on the same features.
            model = LinearReward(rationality=1.0)
        return prior_posterior(model, data, num_samples=self.num_draws, seed=self.seed)

    def _refit(self) -> None:
        if self.store.num_items == 0:  # (an empty store has no feature dimension to build data with)
            self._posterior, self._shown = None, []
            return
        data = self.data
        self._shown = _shown_items(data)
        # No answer yet (killed in round 0 after its pool was stored): no posterior, as in a new session,
        # so that the retried first pool is drawn unsteered, as the pool that was stored.
        self._posterior = None if data.num_observations == 0 else self._fit(data)

    # ----------------------------------------------------------------- round
    def step(self) -> RoundRecord:
        """Run one round; returns what it asked and measured.

        A round that an exception interrupted (raised by the user, e.g. Ctrl-C while
        answering, by the update, ...) is finished first, as :meth:`resume` would:
        its stored query is asked again when unanswered.
        """
        if self._closed:  # its rater's lock is released: another process may be asking this rater's rounds
            raise StoreError(f"This session of rater {self.rater} in {self.store.path} is closed; continue it with "
                             f"PreferenceSession.resume(path, ..., rater={self.rater}).")
        if self._superseded:  # it would ask the rounds the newer one asks, under the newer one's stored settings
            raise StoreError(f"A newer session of rater {self.rater} in {self.store.path} was begun or resumed in "
                             "this process; this one no longer asks: step the newer one.")
        if self._round_open:  # an exception interrupted this round, perhaps after its query was stored
            stored = self._round_query()
            if stored is not None:
                self._round_start = None
                return self._complete_open_round(stored)
            if self._round_start is not None:  # not stored after all: drawn again, as a resume would
                self._rewind(*self._round_start)
                self._round_start = None
        t0 = time.perf_counter()
        # A failure before the query is stored (in the source, the selection, ...) rewinds the random
        # state, so that a retried step draws this round's pool again, as resume() would.
        rng_state, source_state = self.generator.get_state(), self._source_state()
        try:
            # min: a store begun before pool_size was checked against the pool drew the whole pool each round
            n = min(self.pool_size, getattr(self.source, "max_candidates", self.pool_size))
            pool = self.source.candidates(self._posterior, n, exploration=self.exploration, generator=self.generator)
            if pool.features.shape[1] != self.source.num_features:
                raise InputDataError("candidates.features", f"`n x {self.source.num_features}`",
                                     tuple(pool.features.shape))
            t_pool = time.perf_counter()
            idx = self._unasked_pool(pool)
            if idx is None:
                sources = ["steered" if steered else "explore" for steered in pool.steered.tolist()]
                idx = self.store.add_items(pool.features, images=pool.images, source=sources, round=self.round,
                                           rater=self.rater)
            post = self._posterior or self._prior(self.data)
            sel = select_queries(post, pool.features.to(torch.float64), strategy=self.strategy, k=1,
                                 query_type=self.query_type, generator=self.generator)
        except BaseException:
            self._rewind(rng_state, source_state)
            raise
        chosen = sel.indices[0].reshape(-1).tolist()
        item_a, item_b = idx[chosen[0]], idx[chosen[1]] if self.query_type == "pair" else None
        score = float(sel.scores[0])
        self._round_open = True
        try:
            query_id = self.store.add_query(
                round=self.round, rater=self.rater, kind=self.query_type, item_a=item_a, item_b=item_b, score=score,
                rng_state=self.generator.get_state(), source_state=self._source_state(),
            )
        except BaseException:
            try:
                stored = self._round_query() is not None
            except Exception:  # the store cannot say: the round stays open, for the next step to look again
                stored, self._round_start = True, (rng_state, source_state)
            if not stored:  # refused (busy, disk full): retried as if never drawn
                self._round_open = False
                self._rewind(rng_state, source_state)
            raise
        query = StoredQuery(query_id, self.round, self.rater, self.query_type, item_a, item_b, score, None)
        t_select = time.perf_counter()
        query = self._ask_and_update(query)
        t_update = time.perf_counter()
        realised = weight_entropy_bits(post) - weight_entropy_bits(self._posterior)
        metrics = {
            "information_bits": float(sel.information_bits[0]),
            "realised_information_bits": realised,
            "pool_steered_share": float(pool.steered.double().mean()),
            "seconds_pool": t_pool - t0, "seconds_select": t_select - t_pool, "seconds_update": t_update - t_select,
            **self._finetune_if_due(),
        }
        return self._finish_round(query, metrics)

    def _rewind(self, rng_state: Tensor, source_state: dict[str, Any] | None) -> None:
        """Restore the random state of the round's start, so that a retried step draws its pool again."""
        self.generator.set_state(rng_state)
        if source_state is not None and callable(getattr(self.source, "load_state", None)):
            self.source.load_state(source_state)

    def _round_query(self) -> StoredQuery | None:
        """This round's query when it reached the store, else None."""
        queries = self.store.queries(rater=self.rater)
        return queries[-1] if queries and queries[-1].round == self.round else None

    def _unasked_pool(self, pool: Any) -> list[int] | None:
        """The stored indices of ``pool`` when a crash stored this very pool for this round before its query.

        The restored random state draws the same pool again; its items are then not
        stored twice. None (store the pool) when the round has no items yet, or
        different ones (a source whose draws are not reproducible).
        """
        stored = self.store.round_items(rater=self.rater, round=self.round, start=self._round_items_from)
        if len(stored) != pool.features.shape[0]:
            return None
        features = self.store.features(stored)
        return stored if torch.equal(features, pool.features.detach().to(torch.float64).cpu()) else None

    def _complete_open_round(self, query: StoredQuery, *, refit: bool = True) -> RoundRecord:
        """Finish the round of ``query``, stored in a round that an exception or a crash left open.

        Asked again when unanswered; with its answer stored, the posterior is refitted
        (``refit``), as the update may not have seen it.
        """
        if query.answer is None:
            query = self._ask_and_update(query)
        elif refit:
            self._refit()
        return self._finish_round(query, {"resumed": 1.0, **self._finetune_if_due()})

    def _source_state(self) -> dict[str, Any] | None:
        """The source's resumable state (sources with a ``state()`` method), else None."""
        state = getattr(self.source, "state", None)
        return state() if callable(state) else None

    def _finetune_if_due(self) -> dict[str, float]:
        """Fine-tune when this round is one of every ``finetune_every``; its metrics (empty when not due)."""
        if self.finetune_every is None or (self.round + 1) % self.finetune_every != 0:
            return {}
        return {"finetuned": 1.0, "seconds_finetune": self._finetune()}

    def _finetune(self) -> float:
        """Fine-tune the source on the current posterior; seconds taken.

        Seeded by (seed, round) on a generator of its own, so the session's random
        stream, and with it an exact resume, does not depend on fine-tuning.
        """
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.round)
        self.source.finetune(self.posterior, generator=gen, path=self.finetune_path, **self.finetune_options)
        return time.perf_counter() - t0

    def _ask_and_update(self, query: StoredQuery) -> StoredQuery:
        """Ask, write the answer durably, then update the posterior; the query with its answer."""
        answer = self._ask(query)
        self.store.record_answer(query.id, answer)  # durable before anything else
        data = self.data
        self._shown = _shown_items(data)
        if self._posterior is None or (self.refit_every and (self.round + 1) % self.refit_every == 0):
            self._posterior = self._fit(data)
        else:
            self._posterior = self._posterior.update(data)
        return replace(query, answer=answer)

    def _ask(self, query: StoredQuery) -> str:
        def view(i: int) -> Tensor:
            try:
                return self.store.images([i])
            except InputDataError:
                return self.store.features([i])  # (that row only: the whole store's were read twice a round)

        if query.kind == "pair":
            answer = self.user.compare(view(query.item_a), view(query.item_b))
            pair = answer if isinstance(answer, (tuple, list)) and len(answer) == 2 else (None, None)
            won, tie = (_one_value(v, (0.0, 1.0)) for v in pair)
            if won is None or tie is None:  # checked before anything is written: the query stays pending
                raise InputDataError("user.compare", "(first_won, tie): two one-element tensors of bools (or 0/1)",
                                     _shown_value(answer))
            if tie and not getattr(self.model, "ties", False):  # stored, it would stop every later update
                raise InputDataError("user.compare", "a strict answer (the session's model has ties=False; "
                                     "begin the session with e.g. LinearReward(rationality=1.0, ties=True) "
                                     "to take ties)", "a tie")
            return "tie" if tie else ("first" if won else "second")
        answer = self.user.rate(view(query.item_a))
        like = _one_value(answer, (-1.0, 1.0))
        if like is None:
            raise InputDataError("user.rate", "a one-element tensor: +1 (like) or -1 (dislike)", _shown_value(answer))
        return "like" if like > 0 else "dislike"

    def _finish_round(self, query: StoredQuery, metrics: dict[str, float]) -> RoundRecord:
        features = self.store.features()
        post = self._posterior
        metrics["posterior_log_sd"] = _entropy_proxy(post, *self._distinct.update(features))
        shown = features[torch.tensor(self._shown, dtype=torch.long)]
        div = exposure_diversity(shown, features, num_cells=min(16, features.shape[0]))
        metrics["exposure_entropy_bits"] = float(div.entropy_bits)
        metrics["exposure_coverage"] = float(div.coverage)
        metrics["num_answers"] = float(self.store.num_answers(self.rater))
        self.store.finish_round(rater=self.rater, round=self.round, metrics=metrics, source_state=self._source_state())
        record = RoundRecord(self.round, query, metrics)
        self._round_items_from = features.shape[0]  # every item stored until now: the next round's come later
        self.round += 1
        self._round_open = False
        if self.on_round is not None:
            self.on_round(self, record)
        return record

    @renamed_option("progress", "progress_bar")
    def run(self, num_rounds: int, *, progress_bar: bool = True) -> list[RoundRecord]:
        """Run ``num_rounds`` rounds with a progress bar (``progress_bar=False``: none)."""
        from tqdm.auto import trange

        out = []
        num_rounds = check_int("num_rounds", num_rounds, minimum=0)
        progress_bar = check_bool("progress_bar", progress_bar)
        for _ in trange(num_rounds, desc="labels", disable=not progress_bar):
            out.append(self.step())
        return out

    def recommend(self, n: int) -> Candidates:
        """`n` samples steered by the current posterior.

        Drawn on a generator of their own, seeded by (seed, round): the session's
        random stream, and with it an exact resume, does not depend on how often
        recommendations were drawn, and the same answers give the same samples.
        """
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + 7919 * self.round + 1) % 2**63)
        return self.source.recommend(self.posterior, check_int("n", n), generator=gen)

    def close(self) -> None:
        """Release this rater's lock (see :func:`~papa_bayes.locks.lock_rater`) and close the store
        if the session opened it (a :class:`PreferenceStore` passed in stays open); a later :meth:`step`
        raises :class:`StoreError`."""
        self._closed = True
        self._release()
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> PreferenceSession:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _release(self) -> None:
        key = (Path(self.store.path).resolve(), self.rater)
        with _ASKING_GUARD:
            if _ASKING.get(key) is self:
                del _ASKING[key]
        if getattr(self, "_lock", None) is not None:
            self._lock.close()
            self._lock = None

    def __repr__(self) -> str:
        return f"PreferenceSession(store={str(self.store.path)!r}, round={self.round}, query_type={self.query_type!r}, strategy={self.strategy!r})"
