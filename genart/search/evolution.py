"""The search loop: ask a generation from a nevergrad optimiser, evaluate it, tell it the fitness.

One evaluation is one repeat of one individual: a prompt drawn from the genome (genart.search.
decoding) and an image seed. An individual's fitness is the mean of its repeats; a repeat that
failed or was lost counts the scorer's worst score. nevergrad minimises, so it is told −fitness.

Resuming never unpickles an optimiser: a new one is built with the same seed and replays the
ask/tell history from search.db. Each replayed ask must give the stored genome again (checked),
so the search continues on the very trajectory an uninterrupted one follows. Evaluations already
finished are taken from the database, never run again; the failed ones of a generation not yet
told run again (a resume after fixing what made them fail). Until some job has worked, a
generation runs one job first: if it fails (missing weights, a bad override) the search stops
at once with its error; a generation whose every job failed stops it too, before it is told.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from genart.errors import UserError
from genart.search.decoding import Decoding, draw_rng, image_seed
from genart.search.store import SearchStore


@dataclass(frozen=True)
class Settings:
    """conf/search/*.yaml's `search` node."""

    pieces: tuple[str, ...]
    seed: int = 0
    population: int = 20
    repeats: int = 10
    generations: int = 10
    optimizer: str = "TwoPointsDE"
    init: float = 0.15  # every piece's starting probability (~15 of 100 drawn)
    k: int = 15
    template: str = "{pieces}"
    joiner: str = ", "
    keep: str = "random"
    worst: float | None = None  # fitness of a failed job; None = the scorer's range minimum

    @classmethod
    def from_config(cls, node: dict) -> Settings:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(node) - known)
        if unknown:
            raise UserError(
                f"search.{unknown[0]} is not a search setting. The settings are: "
                f"{', '.join(sorted(known))} (conf/search/unseen.yaml explains each)."
            )
        settings = cls(**{**node, "pieces": tuple(str(p) for p in node.get("pieces") or ())})
        settings.check()
        return settings

    def check(self) -> None:
        for key, least in (("population", 2), ("repeats", 1), ("generations", 1)):
            value = getattr(self, key)
            if not isinstance(value, int) or value < least:
                raise UserError(f"search.{key} is {value!r}; it must be a whole number ≥ {least}.")
        if not 0.0 <= float(self.init) <= 1.0:
            raise UserError(f"search.init is {self.init}; a probability lies in [0, 1].")
        self.decoding  # noqa: B018 - Decoding checks pieces, k, template and keep

    @property
    def decoding(self) -> Decoding:
        return Decoding(self.pieces, self.k, self.template, self.joiner, self.keep)


@dataclass
class Evaluation:
    """One repeat of one individual, as a job runs it."""

    generation: int
    individual: int
    repeat: int
    prompt: str
    pieces: list[int]
    seed: int
    job: int | None = None
    run_dir: str | None = None

    @property
    def key(self) -> tuple[int, int]:
        return (self.individual, self.repeat)


@dataclass
class Outcome:
    status: str  # ok | failed
    score: float | None = None
    image: str | None = None
    error: str | None = None

    @property
    def scored(self) -> bool:
        """Finished ok with a finite score: what counts as the score, not the worst."""
        return self.status == "ok" and self.score is not None and math.isfinite(self.score)


@dataclass
class Runner:
    """How evaluations run. `place` gives each its job number and run dir before it starts (the
    database records them first); `run` runs a batch and returns their outcomes in order; `recover`
    reads the outcome of one a killed search had launched (None: it never finished)."""

    run: Callable[[list[Evaluation]], list[Outcome]]
    place: Callable[[list[Evaluation], int], None] = lambda evaluations, first_job: None
    recover: Callable[[Evaluation], Outcome | None] = lambda evaluation: None


@dataclass
class Generation:
    """What a told generation hands to loggers."""

    number: int
    fitness: list[float]
    evaluations: list[tuple[Evaluation, Outcome]] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return sum(self.fitness) / len(self.fitness)

    @property
    def best(self) -> float:
        return max(self.fitness)


def build_optimizer(settings: Settings):
    """nevergrad's optimiser named by search.optimizer over p ∈ [0, 1]^n, seeded."""
    import nevergrad as ng

    registry = ng.optimizers.registry
    if settings.optimizer not in registry:
        close = difflib.get_close_matches(settings.optimizer, list(registry), n=3)
        raise UserError(
            f'search.optimizer is "{settings.optimizer}", which nevergrad does not have. '
            f"{'Did you mean ' + ', '.join(close) + '? ' if close else ''}Use any name of "
            "nevergrad.optimizers.registry, e.g. TwoPointsDE, DE or PortfolioDiscreteOnePlusOne."
        )
    n = len(settings.pieces)
    param = ng.p.Array(init=np.full(n, float(settings.init)), lower=0.0, upper=1.0)
    param.random_state = np.random.RandomState(settings.seed)
    budget = settings.population * settings.generations
    return registry[settings.optimizer](
        parametrization=param, budget=budget, num_workers=settings.population
    )


class Search:
    def __init__(self, settings: Settings, store: SearchStore, worst: float) -> None:
        self.settings, self.store, self.worst = settings, store, float(worst)

    def evaluations_of(
        self, generation: int, genomes: Sequence[Sequence[float]]
    ) -> list[Evaluation]:
        s, found = self.settings, []
        for i, genome in enumerate(genomes):
            for r in range(s.repeats):
                pieces = s.decoding.draw(genome, draw_rng(s.seed, generation, i, r))
                found.append(
                    Evaluation(
                        generation, i, r, s.decoding.prompt(pieces), pieces,
                        image_seed(s.seed, generation, i, r),
                    )
                )  # fmt: skip
        return found

    def run(
        self, runner: Runner, on_generation: Callable[[Generation], None] | None = None
    ) -> list[Generation]:
        """Every generation; those already told (a resume) are replayed, not evaluated."""
        optimizer = build_optimizer(self.settings)
        told = self.store.told()
        done = []
        for g in range(self.settings.generations):
            candidates = [optimizer.ask() for _ in range(self.settings.population)]
            genomes = [c.value.tolist() for c in candidates]
            self.check_replay(g, genomes)
            if g < len(told):
                fitness = self.store.fitness(g)
            else:
                generation = self.evaluate(g, genomes, runner)
                fitness = generation.fitness
                done.append(generation)
                if on_generation is not None:
                    on_generation(generation)
            for candidate, f in zip(candidates, fitness, strict=True):
                optimizer.tell(candidate, -f)
        return done

    def check_replay(self, generation: int, genomes: list[list[float]]) -> None:
        stored = self.store.genomes(generation)
        if not stored:
            self.store.add_individuals(generation, genomes)
        elif stored != genomes:
            raise UserError(
                f"Resuming {self.store.path.parent}: replaying the optimiser did not give back "
                f"generation {generation}'s stored individuals, so it would not continue the same "
                "search. This happens when nevergrad's version or the search settings differ from "
                "the ones that started it; resume with those, or start a new search."
            )

    def evaluate(self, generation: int, genomes: list[list[float]], runner: Runner) -> Generation:
        evaluations = self.evaluations_of(generation, genomes)
        recorded = self.store.evaluations(generation)
        outcomes: dict[tuple[int, int], Outcome] = {}
        for e in evaluations:
            row = recorded.get(e.key)
            if row is None:
                continue
            if row["status"] == "ok":
                outcomes[e.key] = Outcome("ok", row["score"], row["image"])
                continue
            if row["status"] == "failed":  # a generation not yet told: its failures run again
                continue
            e.job, e.run_dir = row["job"], row["run_dir"]
            found = runner.recover(e)  # launched before the kill: it may have finished anyway
            if found is not None:
                outcomes[e.key] = found
                self.store.finish([self.row(e, found)])
        todo = [e for e in evaluations if e.key not in outcomes]
        if todo and len(todo) > 1 and not self.store.succeeded():
            # nothing has worked yet: one job first, so a config that fails every job (missing
            # weights) says so after one job, not after a whole generation of failures
            self.run_batch(todo[:1], runner, outcomes)
            if outcomes[todo[0].key].status != "ok":
                self.refuse_all_failed(generation, outcomes[todo[0].key].error, "Its first job")
            todo = todo[1:]
        if todo:
            self.run_batch(todo, runner, outcomes)
        pairs = [(e, outcomes[e.key]) for e in evaluations]
        per_individual = [[] for _ in genomes]
        for e, o in pairs:
            per_individual[e.individual].append(self.fitness_of(o))
        fitness = [sum(f) / len(f) for f in per_individual]
        failed = sum(o.status != "ok" for _, o in pairs)
        if failed == len(pairs):
            self.refuse_all_failed(generation, pairs[0][1].error, "Every job")
        self.store.tell(generation, fitness, failed=failed, evaluations=len(pairs))
        return Generation(generation, fitness, pairs)

    def run_batch(self, todo: list[Evaluation], runner: Runner, outcomes: dict) -> None:
        """Number and record the evaluations, run them, record their outcomes."""
        runner.place(todo, self.store.next_job())
        self.store.launch([vars(e) for e in todo])
        results = runner.run(todo)
        self.store.finish([self.row(e, o) for e, o in zip(todo, results, strict=True)])
        outcomes.update({e.key: o for e, o in zip(todo, results, strict=True)})

    def refuse_all_failed(self, generation: int, error: str | None, which: str) -> None:
        where = self.store.path.parent
        if which == "Its first job":
            raise UserError(
                f"The first job of this search failed, so it stops before running the rest: "
                f"{error}. Fix that (the job's error.txt in {where} has the details) and start the "
                "search again; nothing is lost, no job of it has worked yet."
            )
        raise UserError(
            f"Every job of generation {generation} failed, so the search has nothing to learn "
            f"from it; the first said: {error}. Fix what made them fail without changing the "
            f"search's overrides (memory, a file), then continue with the same command plus "
            f"hydra.sweeper.resume={where}: the failed jobs of that generation run again."
        )

    def fitness_of(self, outcome: Outcome) -> float:
        return float(outcome.score) if outcome.scored else self.worst

    def row(self, e: Evaluation, o: Outcome) -> dict:
        ok = o.scored
        return {
            "generation": e.generation, "individual": e.individual, "repeat": e.repeat,
            "image": o.image, "score": o.score if ok else None, "fitness": self.fitness_of(o),
            "status": "ok" if ok else "failed",
            "error": None if ok else (o.error or "the job gave no score"),
        }  # fmt: skip
