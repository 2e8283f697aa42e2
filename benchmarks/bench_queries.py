"""Label efficiency of query strategies on APReL's linear protocol, and the speed of a round.

Protocol (DESIGN.md section 8; Biyik et al. 2022, APReL): w* uniform on the sphere in
d dimensions, a logit user with a given rationality, a pool of N(0, I) items (500);
each run asks ``--queries`` pairwise questions (the first a random pair, the same for
every strategy of a seed) and records, after every answer, the alignment
cos(E[w], w*), the held-out log-loss (nats, expected under the user's true answer
probabilities on ``--heldout-pairs`` pairs of fresh items), the regret of the item
with the highest posterior mean, and the expected information of the query (bits; a
binary answer carries at most 1).

Arms: ours (Laplace posterior updated online, selection over *all* pairs of the
pool: 124,750 for 500 items) with strategies EIG, uncertainty, Thompson, random (and
any other of ``papa_bayes.acquisition.STRATEGIES``); BoTorch's ``PairwiseGP`` with a
linear kernel, refitted each round (``fit_gpytorch_mll``), choosing among
``--botorch-candidates`` random pairs with its ``PairwiseBayesianActiveLearningByDisagreement``
("botorch_bald") or ``AnalyticExpectedUtilityOfBestOption`` ("botorch_eubo").

Speed: one online round (update on m comparisons + selection over all pairs with 256
draws), single thread, min and median of repeats; the update with refined draws
(resample-move, the 'refined' arms); BoTorch's fit and selection beside it, measured in
the same run.

Outputs (``--out``, file stem ``--name``, default ``bench_queries``): ``<name>.json``
(aggregated curves and per-run figures), ``<name>.md`` (tables),
``<name>_{alignment,log_loss,regret,bits}.png``; raw per-run curves in
``<out>/tmp/<name>_runs.json``. Results are written
after every (d, rationality) setting, so a long run can be read while it goes.

Run:
    python -m benchmarks.bench_queries --tiny
    nohup python -m benchmarks.bench_queries --dims 8 --rationalities 1 --seeds 20 &
    python -m benchmarks.bench_queries --merge a/x.json b/y.json --name pooled  # e.g. --seed 0 and --seed 20 runs
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from papa_bayes import LinearReward, fit
from benchmarks.common import (RESULTS, add_out_option, counts, file_stem, machine, one_of,
                               output_folder, recorded_args, recorded_folder, result_files,
                               run_main, write_text)
from papa_bayes.acquisition import STRATEGIES, queries_to_reach, run_active_learning, select_queries
from papa_bayes.data import PreferenceData
from papa_bayes.exceptions import InputDataError, PapaBayesWarning
from papa_bayes.checks import DefaultsHelpFormatter, parse_with_tiny
from papa_bayes.users import SimulatedUser, random_pairs, random_unit_vector, simulate_comparisons, winner_first

LEVEL = 0.9
# make_problem's seed term for a noiseless user (rationality inf): int(1000 * inf) overflows. As a
# rationality of 1e6 would seed; a finite rationality that large is no setting of this protocol.
INF_RATIONALITY_SEED = 10**9
REFINE_STEPS = 20
MODELS = ("learned", "refined", "scaled", "known")  # the ``:model`` part of an arm (none: learned)
BOTORCH_ARMS = ("botorch_bald", "botorch_eubo")


# ----------------------------------------------------------------------------- args
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=DefaultsHelpFormatter)
    p.add_argument("--dims", default="4,8,16", help="feature dimensions d, comma-separated")
    p.add_argument("--rationalities", default="0.5,1,5", help="user rationalities, comma-separated (inf: noiseless)")
    p.add_argument("--pool-size", type=int, default=500, help="N(0, I) items in the pool (every pair is a candidate)")
    p.add_argument("--queries", type=int, default=50, help="answers per run (the first query is a random pair)")
    p.add_argument("--seeds", type=int, default=20, help="runs per arm, on seeds --seed, --seed + 1, ...")
    p.add_argument(
        "--strategies", default="eig,eig:known,uncertainty:known,thompson:known,random:known",
        help="our arms: strategy[:model], model 'learned' (default: LinearReward(), rationality learned, "
        "prior N(0, I)), 'refined' (the same with Laplace draws refined by resample-move, fit(refine_steps=20)), "
        "'scaled' (rationality learned, prior N(0, I/d): unit-variance utilities of N(0, I) items) "
        "or 'known' (APReL's setting: the user's rationality known, prior N(0, I/d))",
    )
    p.add_argument("--num-samples", type=int, default=256, help="posterior draws")
    p.add_argument("--heldout-pairs", type=int, default=1000, help="pairs of fresh items for the held-out log-loss")
    p.add_argument("--botorch", default="botorch_bald,botorch_eubo",
                   help=f"BoTorch arms, comma-separated, of {', '.join(BOTORCH_ARMS)} ('' for none)")
    p.add_argument("--botorch-settings", default="8:1",
                   help="d:rationality settings for the BoTorch arms, comma-separated ('all': every setting)")
    p.add_argument("--botorch-seeds", type=int, default=8, help="seeds of the BoTorch arms (slow: ~0.7 s a round)")
    p.add_argument("--botorch-candidates", type=int, default=2000, help="random candidate pairs per BoTorch round")
    p.add_argument("--speed-repeats", type=int, default=20, help="timed repeats of each step of the speed test")
    p.add_argument("--speed-m", default="50,200", help="comparison counts for the speed test, comma-separated")
    p.add_argument("--skip-speed", action="store_true", help="skip the speed test")
    p.add_argument("--skip-protocol", action="store_true", help="skip the label-efficiency protocol")
    p.add_argument("--time-botorch-all-pairs", action="store_true", help="time BoTorch BALD over all pairs once")
    p.add_argument("--liked-set-seeds", type=int, default=0, help="seeds of the set-valued-taste task (0: skip)")
    p.add_argument("--liked-set-queries", type=int, default=30, help="answers per run of the set-valued-taste task")
    p.add_argument(
        "--liked-set-strategies", default="eig,region,region@0.6,argmax,eubo,thompson,random",
        help="strategy[@q]: q sets the region to the pool's top 1 - q share",
    )
    p.add_argument("--seed", type=int, default=0, help="first seed (w*, pool, person and posterior draws of a run)")
    add_out_option(p)
    p.add_argument("--name", default="bench_queries", help="stem of the output files")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="merge earlier result files into <out>/<name>.* and exit: an arm run on disjoint seeds in "
                   "several files is pooled, on the same seeds the later file wins")
    p.add_argument("--tiny", action="store_true",
                   help="seconds-long smoke run (d=3, pool 20, 4 queries, 1 seed, 4 arms; output stem "
                   "bench_queries_tiny); options given explicitly are kept")
    args = parse_with_tiny(p, argv, dict(
        dims="3", rationalities="1", pool_size=20, queries=4, seeds=1,
        botorch_seeds=1, botorch_candidates=30, botorch_settings="all",
        heldout_pairs=20, speed_repeats=1, speed_m="10", num_samples=32,
        liked_set_seeds=1, liked_set_queries=4, liked_set_strategies="eig,region",
        strategies="eig,eig:refined,random:known", botorch="botorch_bald", name="bench_queries_tiny",
    ))
    if args.seeds < 1:
        raise InputDataError("--seeds", "at least 1 seed", args.seeds)
    if args.botorch and args.botorch_seeds < 1:
        raise InputDataError("--botorch-seeds", "at least 1 seed with BoTorch arms (--botorch '' for none)",
                             args.botorch_seeds)
    file_stem("--name", args.name)  # merges too: a name that is a path would fail only when the files are written
    if args.out is None:  # the committed results' folder wherever the command runs from (not cwd-relative)
        args.out = RESULTS / "tmp" if args.tiny else RESULTS
    args.out = str(args.out)  # the result records it by recorded_args (relative to the repository)
    if not args.merge:
        _check_options(args)
    return args


def _check_options(args: argparse.Namespace) -> None:
    """InputDataError naming the option, before hours of runs, for a value that would fail or mislead later."""
    counts("--dims", _ints("--dims", args.dims))
    rationalities = _floats(args.rationalities, "--rationalities")
    if not rationalities:  # an empty list ran no setting and wrote an empty table over <out>/<name>.*
        raise InputDataError("--rationalities", "comma-separated numbers", repr(args.rationalities))
    for r in rationalities:
        if not r > 0:
            raise InputDataError("--rationalities", "positive numbers (inf: a noiseless user)", r)
    counts("--pool-size", args.pool_size, minimum=2)
    for option in ("queries", "num_samples", "heldout_pairs", "botorch_candidates", "speed_repeats",
                   "liked_set_queries"):
        counts(f"--{option.replace('_', '-')}", getattr(args, option))
    counts("--liked-set-seeds", args.liked_set_seeds, minimum=0)
    counts("--seed", args.seed, minimum=0)
    counts("--speed-m", _ints("--speed-m", args.speed_m))
    arms = [s for s in args.strategies.split(",") if s]
    one_of("--strategies", [arm.partition(":")[0] for arm in arms], STRATEGIES)
    one_of("--strategies (model after ':')", [arm.partition(":")[2] for arm in arms if ":" in arm], MODELS)
    known = [arm for arm in arms if arm.partition(":")[2] == "known"]
    if known and any(math.isinf(r) for r in rationalities):  # LinearReward(rationality=inf) is refused
        raise InputDataError("--rationalities", f"finite rationalities with ':known' arms ({', '.join(known)}: the "
                             "model is told the user's rationality; inf only with learned-rationality arms)",
                             args.rationalities)
    if known and any(not 1e-3 <= r <= 1e3 for r in rationalities):  # LinearReward's range for a fixed rationality
        raise InputDataError("--rationalities", f"rationalities in [0.001, 1000] with ':known' arms "
                             f"({', '.join(known)}: the range of LinearReward's fixed rationality)", args.rationalities)
    one_of("--botorch", [s for s in args.botorch.split(",") if s], BOTORCH_ARMS)
    # Nothing to run would still write its empty result over <out>/<name>.* (by default the committed one).
    if not args.skip_protocol and not arms and not [s for s in args.botorch.split(",") if s]:
        raise InputDataError("--strategies", "at least one arm (here or in --botorch), or --skip-protocol",
                             repr(args.strategies))
    if args.skip_protocol and args.skip_speed and args.liked_set_seeds == 0:
        raise InputDataError("--skip-protocol", "something to run: the protocol, the speed test (no --skip-speed) "
                             "or the set-valued-taste task (--liked-set-seeds > 0)", "--skip-speed --liked-set-seeds 0")
    if args.botorch_settings != "all":
        for setting in [s for s in args.botorch_settings.split(",") if s]:
            d, _, r = setting.partition(":")
            try:
                float(d), float(r)
            except ValueError:
                raise InputDataError("--botorch-settings", "'all' or d:rationality pairs such as 8:1",
                                     repr(setting)) from None
        # BoTorch arms alone on settings none of the protocol's would run nothing and write empty tables.
        protocol = {(float(d), r) for d in _ints("--dims", args.dims) for r in rationalities}
        if not args.skip_protocol and not arms and not protocol & _botorch_settings(args.botorch_settings):
            shown = ", ".join(f"{d:g}:{r:g}" for d, r in sorted(protocol))
            raise InputDataError("--botorch-settings", f"'all' or a setting of --dims and --rationalities ({shown}) "
                                 "when the BoTorch arms are the only arms", repr(args.botorch_settings))
        # Beside other arms, a setting no protocol setting matches is no error (the default 8:1 with --dims 4
        # runs our arms only), but the BoTorch arms' absence from the tables should not pass unsaid.
        unmatched = sorted(_botorch_settings(args.botorch_settings) - protocol)
        botorch = [s for s in args.botorch.split(",") if s]
        if botorch and not args.skip_protocol and unmatched:
            shown = ", ".join(f"{d:g}:{r:g}" for d, r in sorted(protocol))
            warnings.warn(f"--botorch-settings: {', '.join(f'{d:g}:{r:g}' for d, r in unmatched)} match(es) no "
                          f"setting of --dims and --rationalities ({shown}); the BoTorch arms ({', '.join(botorch)}) "
                          "do not run there", PapaBayesWarning, stacklevel=2)
    for spec in [s for s in args.liked_set_strategies.split(",") if s]:
        name, at, region = spec.partition("@")
        one_of("--liked-set-strategies", [name], STRATEGIES)
        q = _floats(region, "--liked-set-strategies")
        if at and not (len(q) == 1 and 0 < q[0] < 1):
            raise InputDataError("--liked-set-strategies", "strategy[@q] with 0 < q < 1", repr(spec))


def _botorch_settings(text: str) -> set[tuple[float, ...]] | str:
    """``--botorch-settings`` as (d, rationality) pairs, or 'all'."""
    return "all" if text == "all" else {tuple(float(v) for v in s.split(":")) for s in text.split(",") if s}


def _floats(text: str, option: str = "a comma-separated option") -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputDataError(option, "comma-separated numbers", repr(text)) from None


def _ints(option: str, text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values:
        raise InputDataError(option, "comma-separated integers", repr(text))
    return values


# ------------------------------------------------------------------------ one setting
def make_problem(d: int, rationality: float, seed: int, pool_size: int, heldout_pairs: int):
    """w*, pool, held-out pairs of fresh items, for one seed (the same for every arm)."""
    r_term = int(1000 * rationality) if math.isfinite(rationality) else INF_RATIONALITY_SEED
    gen = torch.Generator().manual_seed(1_000_003 * d + 7919 * seed + r_term)
    w = random_unit_vector(d, generator=gen)
    pool = torch.randn(pool_size, d, generator=gen, dtype=torch.float64)
    fresh = torch.randn(max(pool_size // 2, 2), d, generator=gen, dtype=torch.float64)
    a = torch.randint(0, fresh.shape[0], (heldout_pairs,), generator=gen)
    b = (a + torch.randint(1, fresh.shape[0], (heldout_pairs,), generator=gen)) % fresh.shape[0]
    return w, pool, (fresh[a], fresh[b])


def make_model(spec: str, d: int, rationality: float) -> LinearReward:
    """The reward model of an arm ``strategy[:model]``."""
    _, _, kind = spec.partition(":")
    if kind in ("", "learned", "refined"):
        return LinearReward()
    if kind == "scaled":
        return LinearReward(prior_scale=1.0 / math.sqrt(d))
    if kind == "known":
        return LinearReward(rationality=rationality, prior_scale=1.0 / math.sqrt(d))
    raise ValueError(f"unknown model {kind!r} in arm {spec!r} (use 'learned', 'refined', 'scaled' or 'known')")


def fit_options(spec: str) -> dict[str, Any]:
    """The fit options of an arm ``strategy[:model]`` (``refine_steps`` for 'refined')."""
    return {"refine_steps": REFINE_STEPS} if spec.partition(":")[2] == "refined" else {}


def run_ours(spec: str, d: int, rationality: float, seed: int, args) -> dict[str, Any]:
    w, pool, heldout = make_problem(d, rationality, seed, args.pool_size, args.heldout_pairs)
    user = SimulatedUser(w, rationality=rationality, seed=seed)
    run = run_active_learning(
        user, pool, strategy=spec.partition(":")[0], num_queries=args.queries, num_samples=args.num_samples,
        heldout=heldout, seed=seed, model=make_model(spec, d, rationality), fit_options=fit_options(spec),
    )
    out = run.as_dict()
    out["seconds_per_query"] = [a + b for a, b in zip(run.select_seconds, run.update_seconds[1:])]
    return out


def run_botorch(arm: str, d: int, rationality: float, seed: int, args) -> dict[str, Any]:
    """BoTorch PairwiseGP (linear kernel) + its BALD or EUBO over random candidate pairs.

    PairwiseGP draws from the global RNGs (NumPy's in its Laplace start, torch's in
    its fits); they are seeded from ``seed`` here, so a run does not depend on what
    ran before it in the process.
    """
    from papa_bayes.inference.gp_nuts import seeded

    with warnings.catch_warnings(), seeded(seed):
        warnings.simplefilter("ignore")  # linear_operator's jitter notices on near-singular kernels
        return _run_botorch(arm, d, rationality, seed, args)


def _run_botorch(arm: str, d: int, rationality: float, seed: int, args) -> dict[str, Any]:
    from botorch.acquisition.preference import (
        AnalyticExpectedUtilityOfBestOption,
        PairwiseBayesianActiveLearningByDisagreement,
    )
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import PairwiseGP, PairwiseLaplaceMarginalLogLikelihood
    from gpytorch.kernels import LinearKernel, ScaleKernel

    if arm not in BOTORCH_ARMS:  # any other name would silently run EUBO under that name
        raise InputDataError("arm", f"one of {', '.join(BOTORCH_ARMS)}", repr(arm))
    w, pool, heldout = make_problem(d, rationality, seed, args.pool_size, args.heldout_pairs)
    user = SimulatedUser(w, rationality=rationality, seed=seed)
    n = pool.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    # The same first random pair as run_active_learning draws for this seed.
    first = random_pairs(n, 1, generator=gen)
    shown = first.tolist()
    won, _ = user.compare(pool[first[:, 0]], pool[first[:, 1]])
    comps = winner_first(first, won)
    u_pool = user.utility(pool)
    truth = user.outcome_probabilities(*heldout)
    rec: dict[str, Any] = {k: [] for k in ("alignment", "log_loss", "regret", "information_bits", "select_seconds",
                                           "update_seconds")}
    rec["information_bits"].append(math.nan)
    basis = torch.cat([torch.zeros(1, d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)])
    for t in range(args.queries):
        t0 = time.perf_counter()
        used = torch.unique(comps)
        remap = torch.full((n,), -1, dtype=torch.long)
        remap[used] = torch.arange(used.numel())
        gp = PairwiseGP(pool[used], remap[comps], covar_module=ScaleKernel(LinearKernel()))
        mll = PairwiseLaplaceMarginalLogLikelihood(gp.likelihood, gp)
        try:
            fit_gpytorch_mll(mll)
        except Exception:  # noqa: BLE001 - keep the prior hyperparameters if the fit fails
            pass
        gp.eval()
        rec["update_seconds"].append(time.perf_counter() - t0)
        with torch.no_grad():
            mean_b = gp.posterior(basis).mean.squeeze(-1)
            w_hat = mean_b[1:] - mean_b[0]
            rec["alignment"].append(float(w_hat @ w / (w_hat.norm() * w.norm()).clamp(min=1e-300)))
            post = gp.posterior(torch.stack(heldout, -2))
            m = post.mean.squeeze(-1)
            cov = post.covariance_matrix
            md = m[..., 0] - m[..., 1]
            vd = cov[..., 0, 0] + cov[..., 1, 1] - 2 * cov[..., 0, 1]
            p1 = torch.special.ndtr(md / torch.sqrt(2.0 + vd)).clamp(1e-12, 1 - 1e-12)  # likelihood Phi(delta / sqrt 2)
            rec["log_loss"].append(float(-(truth[:, 0] * p1.log() + truth[:, 1] * (1 - p1).log()).mean()))
            mean_pool = gp.posterior(pool).mean.squeeze(-1)
            rec["regret"].append(float(u_pool.max() - u_pool[int(mean_pool.argmax())]))
        if t == args.queries - 1:
            break
        t0 = time.perf_counter()
        candidates = random_pairs(n, args.botorch_candidates, generator=gen)
        X = pool[candidates]  # `c x 2 x d`
        acq = (PairwiseBayesianActiveLearningByDisagreement(gp) if arm == "botorch_bald"
               else AnalyticExpectedUtilityOfBestOption(gp))
        with torch.no_grad():
            vals = acq(X)
        j = int(vals.argmax())
        rec["select_seconds"].append(time.perf_counter() - t0)
        if arm == "botorch_bald":
            rec["information_bits"].append(float(vals[j]) / math.log(2))
        else:
            with torch.no_grad():
                bald = PairwiseBayesianActiveLearningByDisagreement(gp)(X[j : j + 1])
                rec["information_bits"].append(float(bald) / math.log(2))
        pair = candidates[j].tolist()
        shown.append(pair)
        won, _ = user.compare(pool[pair[0]].unsqueeze(0), pool[pair[1]].unsqueeze(0))
        comps = torch.cat([comps, winner_first(torch.tensor([pair]), won)])
    rec["queries"] = shown
    rec["seconds_per_query"] = [a + b for a, b in zip(rec["select_seconds"], rec["update_seconds"][1:])]
    return rec


# ---------------------------------------------------------------- set-valued taste
def liked_set_run(strategy: str, seed: int, args, *, num_classes: int = 10, num_liked: int = 4,
                  d: int = 8) -> dict[str, Any]:
    """A taste that is a set: ``num_liked`` of ``num_classes`` clusters liked, the rest not.

    Like PAPA's digits task ({1, 4, 7, 9} liked) with a linear reward on features
    (misspecified): two liked items are a coin flip to the person. Records, after
    every answer, the preferred fraction of the 50 items with the highest posterior
    mean, the entropy (bits) of the liked classes among them (2 bits = the four
    liked classes equally present), and the share of queries that compared two
    items of the same level (both liked / both not).
    """
    gen = torch.Generator().manual_seed(50_000 + seed)
    centres = 1.5 * torch.randn(num_classes, d, generator=gen, dtype=torch.float64)
    label = torch.arange(args.pool_size) % num_classes
    pool = centres[label] + 0.7 * torch.randn(args.pool_size, d, generator=gen, dtype=torch.float64)
    liked = torch.arange(num_liked)
    is_liked = torch.isin(label, liked)

    def taste(x: torch.Tensor) -> torch.Tensor:
        nearest = torch.cdist(torch.as_tensor(x, dtype=torch.float64).reshape(-1, d), centres).argmin(-1)
        return torch.isin(nearest, liked).double()

    user = SimulatedUser(taste, rationality=4.0, seed=seed)
    state: dict[str, Any] = {"preferred": [], "liked_entropy": []}

    def record(_: int, post) -> None:
        with torch.no_grad():
            top = post.utility(pool).mean(0).topk(min(50, args.pool_size)).indices
        state["preferred"].append(float(is_liked[top].double().mean()))
        counts = torch.bincount(label[top][is_liked[top]], minlength=num_classes).double()
        p = counts / counts.sum().clamp(min=1)
        state["liked_entropy"].append(float(-(torch.special.xlogy(p, p)).sum() / math.log(2)))

    # Rationality folded into w (fixed at 1; w's N(0, I) prior sets the scale): the learned-rationality
    # model's Laplace line search can step to rationality 0 on this misspecified task (reported upstream).
    name, _, region = strategy.partition("@")  # "region@0.6": the pool's top 40% is the region
    run = run_active_learning(
        user, pool, strategy=name, num_queries=args.liked_set_queries, num_samples=args.num_samples,
        true_weights=torch.ones(d, dtype=torch.float64), seed=seed, callback=record,
        model=LinearReward(rationality=1.0), select_options={"region": float(region)} if region else None,
    )
    q = torch.tensor(run.queries[1:]).reshape(-1, 2)  # the selected ones (the first is random)
    state["both_liked"] = float((is_liked[q[:, 0]] & is_liked[q[:, 1]]).double().mean()) if q.numel() else 0.0
    state["same_level"] = float((is_liked[q[:, 0]] == is_liked[q[:, 1]]).double().mean()) if q.numel() else 0.0
    state["information_bits"] = run.information_bits
    return state


def summarize_liked(runs: list[dict[str, Any]]) -> dict[str, Any]:
    pref = torch.tensor([r["preferred"] for r in runs])
    ent = torch.tensor([r["liked_entropy"] for r in runs])
    return {
        "num_runs": len(runs),
        "preferred": [round(float(v), 4) for v in pref.mean(0)],
        "liked_entropy_bits": [round(float(v), 4) for v in ent.mean(0)],
        "both_liked_share": statistics.mean(r["both_liked"] for r in runs),
        "same_level_share": statistics.mean(r["same_level"] for r in runs),
    }


# ------------------------------------------------------------------------ summaries
def reach_summary(reach: list[int | None], num_queries: int) -> dict[str, Any]:
    """Queries to alignment LEVEL per run (None: never within ``num_queries``) and their means."""
    reached = [q for q in reach if q is not None]
    return {
        "queries_to_0.9": reach,
        "never_reached": sum(q is None for q in reach),
        "mean_queries_to_0.9_reached": statistics.mean(reached) if reached else None,
        "mean_queries_to_0.9_censored": statistics.mean([q if q is not None else num_queries + 1 for q in reach]),
    }


def summarize(runs: list[dict[str, Any]], num_queries: int) -> dict[str, Any]:
    def curve(key):
        A = torch.tensor([r[key] for r in runs], dtype=torch.float64)
        se = A.std(0) / math.sqrt(A.shape[0]) if A.shape[0] > 1 else torch.zeros(A.shape[1], dtype=torch.float64)
        return A.mean(0), se

    out: dict[str, Any] = {"num_runs": len(runs)}
    for key in ("alignment", "log_loss", "regret"):
        m, se = curve(key)
        out[key] = [round(float(v), 5) for v in m]
        out[key + "_se"] = [round(float(v), 5) for v in se]
    out.update(reach_summary([queries_to_reach(r["alignment"], LEVEL) for r in runs], num_queries))
    bits = [b for r in runs for b in r["information_bits"] if not math.isnan(b)]
    out["expected_bits_per_query"] = statistics.mean(bits) if bits else None
    info_curve = ([statistics.mean(x) for x in zip(*[r["information_bits"][1:] for r in runs])]
                  if runs[0]["information_bits"][1:] else [])
    out["expected_bits_curve"] = [round(v, 5) for v in info_curve]
    secs = [s for r in runs for s in r["seconds_per_query"]]
    out["seconds_per_query"] = statistics.mean(secs) if secs else None
    sel = [s for r in runs for s in r["select_seconds"]]
    out["select_seconds"] = statistics.mean(sel) if sel else None
    return out


# ----------------------------------------------------------------------------- speed
def _timed(fn, repeats: int) -> dict[str, float]:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return {"min_s": min(ts), "median_s": statistics.median(ts)}


def speed(args) -> dict[str, Any]:
    """One online round: update on m comparisons + selection over all pairs, 256 draws, one thread.

    Also the update with refined draws (``fit(refine_steps=REFINE_STEPS)``, the 'refined' arms).
    """
    out: dict[str, Any] = {"pool_size": args.pool_size, "num_draws": args.num_samples,
                           "threads": torch.get_num_threads()}
    d = 8
    w, pool, _ = make_problem(d, 1.0, 0, args.pool_size, 10)
    user = SimulatedUser(w, seed=0)
    gen = torch.Generator().manual_seed(0)
    for m in [int(v) for v in _floats(args.speed_m)]:
        data = simulate_comparisons(user, pool, m, generator=gen)
        post = fit(LinearReward(), data, method="laplace", num_samples=args.num_samples)
        new = data.append(comparisons=[[0, 1]])
        refined = fit(LinearReward(), data, method="laplace", num_samples=args.num_samples, refine_steps=REFINE_STEPS)
        row = {
            "update": _timed(lambda: post.update(new), args.speed_repeats),
            "update_refined": _timed(lambda: refined.update(new), args.speed_repeats),
            "select_eig_all_pairs": _timed(lambda: select_queries(post, pool, strategy="eig"), args.speed_repeats),
            "round_eig": _timed(lambda: select_queries(post.update(new), pool, strategy="eig"), args.speed_repeats),
            "round_region": _timed(lambda: select_queries(post.update(new), pool, strategy="region"),
                                   max(args.speed_repeats // 4, 1)),
            "select_eig_exhaustive_mc": _timed(lambda: select_queries(post, pool, strategy="eig", screen=None),
                                               1 if args.tiny else 2),
        }
        out[f"m={m}"] = row
        out[f"m={m}"]["botorch"] = _botorch_speed(pool, data, args)
    return out


def _botorch_speed(pool: torch.Tensor, data: PreferenceData, args) -> dict[str, Any]:
    from botorch.acquisition.preference import PairwiseBayesianActiveLearningByDisagreement
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import PairwiseGP, PairwiseLaplaceMarginalLogLikelihood
    from gpytorch.kernels import LinearKernel, ScaleKernel

    used = torch.unique(data.comparisons)
    remap = torch.full((pool.shape[0],), -1, dtype=torch.long)
    remap[used] = torch.arange(used.numel())
    holder: dict[str, Any] = {}

    def fit_gp():
        gp = PairwiseGP(pool[used], remap[data.comparisons], covar_module=ScaleKernel(LinearKernel()))
        fit_gpytorch_mll(PairwiseLaplaceMarginalLogLikelihood(gp.likelihood, gp))
        gp.eval()
        holder["gp"] = gp

    repeats = 1 if args.tiny else 3
    row: dict[str, Any] = {"fit": _timed(fit_gp, repeats)}
    gen = torch.Generator().manual_seed(1)
    X = pool[random_pairs(pool.shape[0], args.botorch_candidates, generator=gen)]  # `c x 2 x d`
    acq = PairwiseBayesianActiveLearningByDisagreement(holder["gp"])
    with torch.no_grad():
        row[f"bald_{args.botorch_candidates}_pairs"] = _timed(lambda: acq(X), repeats)
        if args.time_botorch_all_pairs:
            first, second = torch.triu_indices(pool.shape[0], pool.shape[0], 1)
            Xall = torch.stack([pool[first], pool[second]], -2)
            t0 = time.perf_counter()
            for lo in range(0, Xall.shape[0], 5000):
                acq(Xall[lo : lo + 5000])
            row["bald_all_pairs_s"] = time.perf_counter() - t0
    return row


# ---------------------------------------------------------------------------- output
def write_outputs(result: dict[str, Any], raw: dict[str, Any], out: Path) -> None:
    name = result["config"]["name"]
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / f"{name}.json", json.dumps(result, indent=1))
    if raw:
        (out / "tmp").mkdir(exist_ok=True)
        write_text(out / "tmp" / f"{name}_runs.json", json.dumps(raw))
    write_text(out / f"{name}.md", markdown(result))
    if result["protocol"]:
        plot(result, out, name)
    if result.get("liked_set"):
        plot_liked(result, out, name)


def _fmt(v, nd=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


SHORT_HORIZON = 40


def _runs(summary: dict[str, Any]) -> str:
    """'300 (seeds 100-399)' for an arm that records its seeds (merged files), else the number of runs."""
    if "seeds" not in summary:
        return str(summary["num_runs"])
    ranges: list[list[int]] = []
    for lo, hi in summary["seeds"]:
        if ranges and ranges[-1][1] + 1 == lo:
            ranges[-1][1] = hi
        else:
            ranges.append([lo, hi])
    return f"{summary['num_runs']} (seeds " + ", ".join(f"{lo}-{hi}" for lo, hi in ranges) + ")"


def _within(reach: list[int | None], horizon: int) -> str:
    """Mean queries to the level over runs reaching it within ``horizon`` answers (misses)."""
    hit = [q for q in reach if q is not None and q <= horizon]
    return f"{_fmt(statistics.mean(hit), 1) if hit else '-'} ({len(reach) - len(hit)})"


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [
        "# Query strategies on APReL's linear protocol",
        "",
        f"Pool {cfg['pool_size']} N(0, I) items (every pair scored by our arms), {cfg['queries']} answers per run, "
        "our arms `strategy[:model]`: `learned` = LinearReward() (rationality learned, prior N(0, I)), `refined` = the "
        f"same with its Laplace draws refined by resample-move (`fit(refine_steps={REFINE_STEPS})`), `scaled` = "
        "LinearReward(prior_scale=1/sqrt(d)) (rationality learned, prior N(0, I/d): N(0, I) items get unit-variance "
        "utilities), `known` = APReL's setting (the user's rationality known, prior N(0, I/d)); "
        f"{cfg['num_samples']} posterior draws; BoTorch arms: PairwiseGP (linear kernel) refitted each round, "
        f"best of {cfg['botorch_candidates']} random pairs. Queries to alignment {LEVEL}: mean over runs that "
        "reached it "
        f"(runs that never did, of how many) and the censored mean counting a miss as {cfg['queries'] + 1}; "
        f"'within {SHORT_HORIZON}': the same over the first {SHORT_HORIZON} answers (the horizon of the issue's "
        "BoTorch reference). "
        "Bits/query: expected information about the reward of the asked query under the arm's own posterior "
        "(a binary answer carries at most 1 bit; BoTorch arms: its BALD, which assumes unit probit noise). "
        "s/query: one selection + one update, wall time on the shared 2-core machine. "
        "Written by benchmarks/bench_queries.py.",
        "",
    ]
    if result.get("partial"):
        lines[1:1] = ["", "**Partial: written while the run went on; it did not finish (yet). `--merge` refuses it.**"]
    T = cfg["queries"]
    marks = [t for t in (10, 20, 30, T) if t <= T]
    marks = sorted(set(marks))
    for key, arms in result["protocol"].items():
        lines += [f"## {key}", ""]
        head = ("| arm | runs | " + " | ".join(f"align@{t}" for t in marks)
                + f" | to {LEVEL} (never/runs) | censored | within {SHORT_HORIZON} (never) | log-loss@{T} | regret@{T}"
                " | bits/query | s/query |")
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for arm, s in arms.items():
            align = " | ".join(_fmt(s["alignment"][t - 1]) for t in marks)
            lines.append(
                f"| {arm} | {_runs(s)} | {align} | {_fmt(s['mean_queries_to_0.9_reached'], 1)} "
                f"({s['never_reached']}/{s['num_runs']}) "
                f"| {_fmt(s['mean_queries_to_0.9_censored'], 1)} | {_within(s['queries_to_0.9'], SHORT_HORIZON)} "
                f"| {_fmt(s['log_loss'][-1])} | {_fmt(s['regret'][-1])} "
                f"| {_fmt(s['expected_bits_per_query'])} | {_fmt(s['seconds_per_query'])} |"
            )
        lines.append("")
    if result.get("liked_set"):
        Tl = cfg["liked_set_queries"]
        mk = sorted({t for t in (5, 10, 20, Tl) if t <= Tl})
        lines += [
            "## Set-valued taste (4 of 10 clusters liked; linear reward on features, misspecified)", "",
            "Preferred fraction of the 50 pool items with the highest posterior mean after t answers; entropy of the "
            "liked clusters among them (2 bits = all four liked clusters equally); share of selected queries comparing "
            "two liked items (a coin flip to the person) and two items of the same level; means over the runs "
            "(seeds).", "",
            "| strategy | runs | " + " | ".join(f"preferred@{t}" for t in mk)
            + f" | liked entropy@{Tl} | both liked | same level |",
            "|" + "---|" * (len(mk) + 5),
        ]
        for strategy, v in result["liked_set"].items():
            lines.append(
                f"| {strategy} | {v['num_runs']} | " + " | ".join(_fmt(v["preferred"][t - 1]) for t in mk)
                + f" | {_fmt(v['liked_entropy_bits'][-1], 2)} | {_fmt(v['both_liked_share'], 2)}"
                f" | {_fmt(v['same_level_share'], 2)} |"
            )
        lines.append("")
    if result.get("speed"):
        sp = result["speed"]
        lines += ["## Speed of one online round (single thread)", "",
                  f"Pool {sp['pool_size']} items = {sp['pool_size'] * (sp['pool_size'] - 1) // 2} pairs, "
                  f"{sp['num_draws']} draws, d = 8; min / median seconds.", "",
                  "| m | update | update, refined draws | EIG over all pairs | update + EIG | update + region "
                  "| exhaustive MC EIG | BoTorch fit | BoTorch BALD (random candidates) | BoTorch BALD all pairs |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for key, row in sp.items():
            if not key.startswith("m="):
                continue
            b = row["botorch"]
            cand = next((v for k, v in b.items() if k.startswith("bald_") and k.endswith("_pairs")), None)
            mm = lambda r: f"{r['min_s']:.3f} / {r['median_s']:.3f}"  # noqa: E731
            lines.append(
                f"| {key[2:]} | {mm(row['update'])} | {mm(row['update_refined']) if 'update_refined' in row else '-'} "
                f"| {mm(row['select_eig_all_pairs'])} | {mm(row['round_eig'])} | {mm(row['round_region'])} "
                f"| {mm(row['select_eig_exhaustive_mc'])} | {mm(b['fit'])} | {mm(cand) if cand else '-'} "
                f"| {_fmt(b.get('bald_all_pairs_s'), 1)} |"
            )
        lines.append("")
    return "\n".join(lines)


_COLOURS = {
    "eig": "tab:blue", "uncertainty": "tab:orange", "thompson": "tab:green", "random": "tab:red",
    "region": "tab:purple", "eubo": "tab:brown", "argmax": "tab:pink", "botorch_bald": "black",
    "botorch_eubo": "tab:gray",
}


def _style(arm: str) -> dict[str, Any]:
    """Colour by strategy, line style by model: solid learned, dashed known, dash-dot refined,
    dash-dot-dot scaled, dotted BoTorch."""
    strategy, _, model = arm.partition(":")
    styles = {"known": "--", "refined": "-.", "scaled": (0, (5, 1.5, 1, 1.5, 1, 1.5))}
    ls = ":" if strategy.startswith("botorch") else styles.get(model, "-")
    return {"color": _COLOURS.get(strategy, None), "ls": ls, "lw": 1.4}


def plot(result: dict[str, Any], out: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(result["protocol"])
    dims = sorted({int(k.split("_")[0][1:]) for k in keys})
    rats = sorted({float(k.split("_")[1][1:]) for k in keys})
    single = len(dims) * len(rats) == 1
    for metric, label in (("alignment", "alignment cos(E[w], w*)"), ("log_loss", "held-out log-loss (nats)"),
                          ("regret", "regret of the recommended item")):
        size = (8, 4.5) if single else (4 * len(rats) + 2, 3 * len(dims))
        fig, axes = plt.subplots(len(dims), len(rats), figsize=size, squeeze=False)
        for i, d in enumerate(dims):
            for j, r in enumerate(rats):
                ax = axes[i][j]
                arms = result["protocol"].get(f"d{d}_r{r:g}", {})
                for arm, s in arms.items():
                    m, se = torch.tensor(s[metric]), torch.tensor(s[metric + "_se"])
                    x = torch.arange(1, m.numel() + 1)
                    st = _style(arm)
                    ax.plot(x, m, label=f"{arm} ({s['num_runs']})", **st)
                    ax.fill_between(x, m - se, m + se, alpha=0.08, color=st["color"])
                if metric == "alignment":
                    ax.axhline(LEVEL, color="grey", lw=0.7, ls=":")
                ax.set_title(f"d={d}, rationality {r:g}", fontsize=9)
                ax.set_xlabel("answers", fontsize=8)
                ax.set_ylabel(label, fontsize=8)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center right", fontsize=7, title="arm (runs)", title_fontsize=7)
        fig.tight_layout(rect=(0, 0, 0.8 if single else 0.86, 1))
        fig.savefig(out / f"{name}_{metric}.png", dpi=110)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    key = "d8_r1" if "d8_r1" in result["protocol"] else keys[0]
    for arm, s in result["protocol"][key].items():
        if s["expected_bits_curve"]:
            ax.plot(range(2, len(s["expected_bits_curve"]) + 2), s["expected_bits_curve"], label=arm, **_style(arm))
    ax.axhline(1.0, color="k", lw=0.8, ls="-.", label="1-bit limit")
    ax.set_xlabel("answer")
    ax.set_ylabel("expected information of the query (bits)")
    ax.set_title(key)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(out / f"{name}_bits.png", dpi=110)
    plt.close(fig)


def plot_liked(result: dict[str, Any], out: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for strategy, v in result["liked_set"].items():
        x = range(1, len(v["preferred"]) + 1)
        st = _style(strategy.partition("@")[0]) | ({"ls": "--"} if "@" in strategy else {})
        axes[0].plot(x, v["preferred"], label=strategy, **st)
        axes[1].plot(x, v["liked_entropy_bits"], label=strategy, **st)
    axes[0].set_ylabel("preferred fraction of top 50")
    axes[1].set_ylabel("liked-cluster entropy (bits)")
    axes[1].axhline(2.0, color="grey", lw=0.7, ls=":")
    for ax in axes:
        ax.set_xlabel("answers")
    axes[0].legend(fontsize=7)
    fig.suptitle("set-valued taste: 4 of 10 clusters liked", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / f"{name}_liked_set.png", dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _main(args)
    finally:
        torch.set_num_threads(threads)


def merge(paths: list[str], args) -> dict[str, Any]:
    """One result from several runs (e.g. arms run in separate processes).

    Every arm records its seeds (``"seeds"``: inclusive ranges, from ``--seed`` and its
    number of runs). An arm found in several files on disjoint seeds is pooled by
    :func:`pool_summaries`; on the same seeds the later file replaces the earlier;
    partly overlapping seeds raise :class:`~papa_bayes.exceptions.InputDataError`.
    """
    parts = result_files("--merge", paths, key="config")
    for path, part in zip(paths, parts):
        if part.get("partial"):  # its missing arms and settings would pass for never run
            raise InputDataError("--merge", "result files of finished runs",
                                 f"{path} (written while its run went on, and that run did not finish)")
    _check_same_protocol(parts, paths)
    # The protocol's settings (its horizon above all: the censored means and the table's columns) come from a
    # file that ran the protocol, whatever the order of the files: a speed-only part (--skip-protocol) records
    # the defaults of options it never used. Its speed section carries its own settings.
    ref = next((part for part in parts if part.get("protocol")), None) or next(
        (part for part in parts if part.get("liked_set")), parts[0])
    result = {k: v for k, v in ref.items() if k not in ("liked_set", "speed")}  # both rebuilt below
    # Every part's own options under "runs": the reference's alone said, e.g., 8 BoTorch seeds of an arm whose
    # 20 runs came from another part.
    result["config"] = {**ref["config"], "name": args.name, "out": recorded_folder(args.out),
                        "merged_from": list(paths), "runs": [part["config"] for part in parts]}
    result["protocol"], result["speed"] = {}, None
    found: dict[str, dict[str, list[dict[str, Any]]]] = {}
    liked: dict[str, list[dict[str, Any]]] = {}  # the set-valued-taste task's strategies, pooled as the arms
    for part in parts:
        first = int(part["config"].get("seed", 0))
        for key, arms in part.get("protocol", {}).items():
            for arm, summary in arms.items():
                _add_piece(found.setdefault(key, {}).setdefault(arm, []), summary, first)
        if part.get("liked_set"):
            for strategy, summary in part["liked_set"].items():
                _add_piece(liked.setdefault(strategy, []), summary, first)
            result["config"]["liked_set_queries"] = part["config"]["liked_set_queries"]
        if part.get("speed"):
            result["speed"] = part["speed"]
    if liked:  # runs split by seed were replaced by the last file's (the tables said 1 run where 2 ran)
        result["liked_set"] = {s: _pool_liked(pieces, f"liked set {s}") if len(pieces) > 1 else pieces[0]
                               for s, pieces in liked.items()}
        result["config"]["liked_set_seeds"] = max(v["num_runs"] for v in result["liked_set"].values())
    queries = result["config"]["queries"]
    result["protocol"] = {
        key: {arm: pool_summaries(pieces, f"{key} {arm}", queries) if len(pieces) > 1 else pieces[0]
              for arm, pieces in arms.items()}
        for key, arms in found.items()
    }
    write_outputs(result, {}, Path(args.out))
    return result


def _add_piece(earlier: list[dict[str, Any]], summary: dict[str, Any], first: int) -> None:
    """``summary`` (an arm's or a liked-set strategy's) with its ``"seeds"`` (from ``first``, its file's ``--seed``,
    when it records none) into ``earlier``, replacing one on the same seeds."""
    summary = {**summary, "seeds": summary.get("seeds") or [[first, first + summary["num_runs"] - 1]]}
    same = [i for i, s in enumerate(earlier) if s["seeds"] == summary["seeds"]]
    if same:
        earlier[same[0]] = summary
    else:
        earlier.append(summary)


PROTOCOL_KEYS = ("queries", "pool_size", "num_samples", "heldout_pairs", "botorch_candidates")
LIKED_SET_KEYS = ("liked_set_queries", "pool_size", "num_samples")  # what liked_set_run reads besides the seed


def _check_same_protocol(parts: list[dict[str, Any]], paths: list[str]) -> None:
    """Files merged into one table must share the protocol of their arms (and of their liked-set runs)."""
    for section, keys in (("protocol", PROTOCOL_KEYS), ("liked_set", LIKED_SET_KEYS)):
        holders = [(path, part["config"]) for path, part in zip(paths, parts) if part.get(section)]
        for path, cfg in holders[1:]:
            ref_path, ref = holders[0]
            for k in keys:
                if cfg.get(k) != ref.get(k):
                    raise InputDataError(
                        f"merge ({path})", f"{k} = {ref.get(k)!r} as in {ref_path} (one protocol per table)", cfg.get(k)
                    )


def _disjoint(pieces: list[dict[str, Any]], label: str) -> list[dict[str, Any]]:
    """``pieces`` (summaries with ``"seeds"``) in the order of their first seeds, or InputDataError naming
    ``label`` where two of them share a seed."""
    pieces = sorted(pieces, key=lambda s: s["seeds"][0][0])
    shown = lambda s: ", ".join(f"{lo}-{hi}" for lo, hi in s["seeds"])  # noqa: E731
    for i, first in enumerate(pieces):
        for second in pieces[i + 1:]:
            if any(lo0 <= hi1 and lo1 <= hi0 for lo0, hi0 in first["seeds"] for lo1, hi1 in second["seeds"]):
                pooled = [s for s in (first, second) if len(s["seeds"]) > 1]
                raise InputDataError(
                    f"merge ({label})",
                    "runs of one arm on the same seeds (the later file replaces the earlier) or on disjoint ones"
                    + (": an arm pooled over several seed ranges is replaced only by runs on all of them (merge the "
                       "reruns into one file first)" if pooled else ""),
                    f"seeds {shown(first)}{' (pooled)' if len(first['seeds']) > 1 else ''} and "
                    f"{shown(second)}{' (pooled)' if len(second['seeds']) > 1 else ''}",
                )
    return pieces


def pool_summaries(pieces: list[dict[str, Any]], label: str, num_queries: int) -> dict[str, Any]:
    """One arm's summary over runs on disjoint seeds, from summaries with ``"seeds"``.

    Per-run lists are joined in the order of the pieces' first seeds; curves' means
    and standard errors are pooled exactly (within- plus between-piece variance);
    per-query figures are weighted by the number of runs.
    """
    pieces = _disjoint(pieces, label)
    ranges = sorted(r for s in pieces for r in s["seeds"])
    ns = [s["num_runs"] for s in pieces]
    total = sum(ns)
    out: dict[str, Any] = {"num_runs": total, "seeds": ranges}
    n = torch.tensor(ns, dtype=torch.float64)[:, None]
    for key in ("alignment", "log_loss", "regret"):
        means = torch.tensor([s[key] for s in pieces], dtype=torch.float64)
        sds = torch.tensor([s[key + "_se"] for s in pieces], dtype=torch.float64) * n.sqrt()
        mean = (n * means).sum(0) / total
        var = ((n - 1) * sds**2 + n * (means - mean) ** 2).sum(0) / (total - 1)
        out[key] = [round(float(v), 5) for v in mean]
        out[key + "_se"] = [round(float(v), 5) for v in (var / total).sqrt()]
    out.update(reach_summary([q for s in pieces for q in s["queries_to_0.9"]], num_queries))

    def weighted(key):
        vals = [(s[key], n) for s, n in zip(pieces, ns) if s.get(key) is not None]
        return sum(v * n for v, n in vals) / sum(n for _, n in vals) if vals else None

    for key in ("expected_bits_per_query", "seconds_per_query", "select_seconds"):
        out[key] = weighted(key)
    curves = [(s["expected_bits_curve"], n) for s, n in zip(pieces, ns)]
    out["expected_bits_curve"] = ([round(sum(c[t] * n for c, n in curves) / total, 5) for t in range(len(curves[0][0]))]
                                  if curves[0][0] else [])
    return out


def _pool_liked(pieces: list[dict[str, Any]], label: str) -> dict[str, Any]:
    """One liked-set strategy's summary (:func:`summarize_liked`) over runs on disjoint seeds: means weighted by
    the number of runs."""
    pieces = _disjoint(pieces, label)
    ns = [s["num_runs"] for s in pieces]
    total = sum(ns)
    mean = lambda values: sum(v * n for v, n in zip(values, ns)) / total  # noqa: E731
    out: dict[str, Any] = {"num_runs": total, "seeds": sorted(r for s in pieces for r in s["seeds"])}
    for key in ("preferred", "liked_entropy_bits"):
        out[key] = [round(mean(values), 4) for values in zip(*[s[key] for s in pieces])]
    for key in ("both_liked_share", "same_level_share"):
        out[key] = mean([s[key] for s in pieces])
    return out


def _main(args) -> dict[str, Any]:
    out = output_folder(args.out)  # a file in its way is refused now, not when the first arm has run
    if args.merge:
        return merge(args.merge, args)
    strategies = [s for s in args.strategies.split(",") if s]
    botorch_arms = [s for s in args.botorch.split(",") if s]
    settings = _botorch_settings(args.botorch_settings)
    # "partial" until the end: a run interrupted leaves files that say so (and that --merge refuses).
    result: dict[str, Any] = {"benchmark": "bench_queries", "machine": machine(), "config": recorded_args(args, out),
                              "protocol": {}, "speed": None, "partial": True}
    raw: dict[str, Any] = {}
    start = time.perf_counter()
    if not args.skip_speed:
        result["speed"] = speed(args)
        write_outputs(result, raw, out)
    if not args.skip_protocol:
        for d in [int(v) for v in _floats(args.dims)]:
            for r in _floats(args.rationalities):
                key = f"d{d}_r{r:g}"
                result["protocol"][key] = {}
                raw[key] = {}
                arms = [(s, run_ours, args.seeds) for s in strategies]
                if settings == "all" or (float(d), r) in settings:
                    arms += [(a, run_botorch, args.botorch_seeds) for a in botorch_arms]
                for arm, runner, seeds in arms:
                    runs = [runner(arm, d, r, args.seed + k, args) for k in range(seeds)]
                    raw[key][arm] = runs
                    result["protocol"][key][arm] = summarize(runs, args.queries)
                    s = result["protocol"][key][arm]
                    print(
                        f"[{time.perf_counter() - start:7.0f} s] {key} {arm:>14}: align@end {s['alignment'][-1]:.3f}, "
                        f"to {LEVEL}: {_fmt(s['mean_queries_to_0.9_reached'], 1)} "
                        f"(never {s['never_reached']}/{s['num_runs']}), "
                        f"{_fmt(s['seconds_per_query'])} s/query", flush=True,
                    )
                    write_outputs(result, raw, out)
    if args.liked_set_seeds > 0:
        result["liked_set"] = {}
        raw["liked_set"] = {}
        for strategy in [v for v in args.liked_set_strategies.split(",") if v]:
            runs = [liked_set_run(strategy, args.seed + k, args) for k in range(args.liked_set_seeds)]
            raw["liked_set"][strategy] = runs
            result["liked_set"][strategy] = summarize_liked(runs)
            s = result["liked_set"][strategy]
            print(
                f"[{time.perf_counter() - start:7.0f} s] liked set {strategy:>12}: "
                f"preferred@end {s['preferred'][-1]:.3f}, liked-class entropy {s['liked_entropy_bits'][-1]:.2f} bits, "
                f"both-liked queries {s['both_liked_share']:.2f}",
                flush=True,
            )
            write_outputs(result, raw, out)
    result["seconds"] = time.perf_counter() - start
    del result["partial"]
    write_outputs(result, raw, out)
    return result


if __name__ == "__main__":
    run_main(main)
