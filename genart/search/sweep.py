"""`hydra/sweeper=evolve` at work: a search's generations as jobs through the configured launcher.

Each evaluation is a job with the command line's own overrides plus three: the sampled prompt as
`++prompts.literal=` (quoted by genart.overrides.quote, so commas, colons, `|`, quotes, brackets
and backslashes reach the job as text; `${` is refused in pieces, see genart.search.decoding), `++prompts.text=null`, and its image `seed=`. The job writes its
result.json as any genart job; the sweeper reads the outcome from it, so a job that failed, or
was lost under any launcher (no result.json, or the launcher itself raised), counts the worst
fitness with its error and the search goes on.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from genart.errors import UserError
from genart.overrides import key_of, quote
from genart.search.evolution import Evaluation, Generation, Outcome, Runner, Search, Settings
from genart.search.store import FILENAME, SearchStore

log = logging.getLogger(__name__)
OWNED = ("seed", "prompts.text", "prompts.literal")  # the search sets these per job
LOST = "the job was lost: it wrote no result.json (killed, out of memory, or its worker died)"


def run_search(sweeper, arguments: list[str]) -> list[Generation]:
    config: DictConfig = sweeper.config
    node = config.get("search")
    if node is None:
        raise UserError(
            "hydra/sweeper=evolve searches prompts, but no search is configured. Add one, e.g. "
            "python -m genart +search=unseen hydra/sweeper=evolve -m (conf/search/)."
        )
    refuse_owned(arguments)
    settings = Settings.from_config(OmegaConf.to_container(node, resolve=True))
    sweep_dir = use_sweep_dir(config, sweeper.resume)
    store = SearchStore(sweep_dir / FILENAME)
    try:
        check_same_search(store, settings, arguments, sweep_dir)
        OmegaConf.save(config, sweep_dir / "multirun.yaml")
        search = Search(settings, store, worst_fitness(config, settings))
        runner = JobRunner(sweeper, arguments, sweep_dir)
        from genart.search.wandb_log import SearchLog

        wandb = SearchLog.from_config(config, sweep_dir, store)
        return search.run(runner.as_runner(), on_generation=lambda g: report(g, wandb))
    finally:
        store.close()


def report(generation: Generation, wandb) -> None:
    print(
        f"genart search: generation {generation.number}: mean fitness {generation.mean:.4f}, "
        f"best {generation.best:.4f}",
        file=sys.stderr,
    )
    if wandb is not None:
        wandb.log_generation(generation)


def refuse_owned(arguments: list[str]) -> None:
    owned = [a for a in arguments if key_of(a) in OWNED]
    if owned:
        raise UserError(
            f"{' '.join(owned)}: a search sets each job's prompt and seed itself (the prompt from "
            "its genome, the seed from search.seed). Leave these out; set search.seed= to change "
            "the search's draws, and search.template= or search.pieces= to change its prompts."
        )
    sweeps = [a for a in arguments if _is_sweep(a)]
    if sweeps:
        raise UserError(
            f"{' '.join(sweeps)}: hydra/sweeper=evolve runs the search's own jobs and does not "
            "sweep other values. Run one search per value instead (each in its own sweep dir)."
        )


def _is_sweep(argument: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(argument).is_sweep_override()
    except Exception:  # noqa: BLE001 - Hydra reports what it cannot parse itself
        return False


def use_sweep_dir(config: DictConfig, resume: str | None) -> Path:
    """This sweep's dir; with hydra.sweeper.resume=<dir>, that dir for the sweeper, the launcher
    (which composes each job's dir from hydra.overrides.hydra) and the sweep's end callbacks."""
    if not resume:
        path = Path(str(config.hydra.sweep.dir))
        path.mkdir(parents=True, exist_ok=True)
        return path
    path = Path(resume).expanduser().resolve()
    if not (path / FILENAME).is_file():
        raise UserError(
            f"hydra.sweeper.resume={resume} holds no {FILENAME}, so there is no search to continue. "
            "Give the sweep dir of an earlier search (it has search.db), e.g. "
            "hydra.sweeper.resume=outputs/multirun/2026-11-24/10-00-00."
        )
    with read_write(config), open_dict(config):
        hydra_overrides = [
            o for o in config.hydra.overrides.hydra if key_of(o) != "hydra.sweep.dir"
        ]
        config.hydra.overrides.hydra = [*hydra_overrides, f"hydra.sweep.dir={quote(str(path))}"]
        config.hydra.sweep.dir = str(path)
    return path


def check_same_search(
    store: SearchStore, settings: Settings, arguments: list[str], sweep_dir: Path
) -> None:
    """A new search records its settings; a resumed one must have the same."""
    import nevergrad

    now = {
        "search": vars(settings) | {"pieces": list(settings.pieces)},
        "arguments": list(arguments),
        "nevergrad": nevergrad.__version__,
    }
    before = store.settings()
    if not before:
        store.save_settings(now)
        return
    changed = [k for k in ("search", "arguments") if before.get(k) != now[k]]
    if changed:
        was = " ".join(before.get("arguments") or [])
        raise UserError(
            f"{sweep_dir} holds a search with other {' and '.join(changed)} than this command's, "
            f"so resuming would not continue it. It was started with: {was}. Resume with exactly "
            "those overrides plus hydra.sweeper.resume=…, or start a new search without resume."
        )


def worst_fitness(config: DictConfig, settings: Settings) -> float:
    if settings.worst is not None:
        return float(settings.worst)
    scorer_range = OmegaConf.select(config, "scorer.range", default=None)
    if scorer_range is None:
        raise UserError(
            "The scorer declares no range, so a failed job has no worst fitness. Set "
            "search.worst=… (a score below any real one), or pick a scorer with a range."
        )
    return float(scorer_range[0])


class JobRunner:
    """Evaluations as genart jobs through the sweeper's launcher."""

    def __init__(self, sweeper, arguments: list[str], sweep_dir: Path) -> None:
        self.sweeper, self.arguments, self.sweep_dir = sweeper, list(arguments), sweep_dir

    def as_runner(self) -> Runner:
        return Runner(run=self.run, place=self.place, recover=self.recover)

    def overrides(self, e: Evaluation) -> list[str]:
        return [
            *self.arguments,
            "++prompts.text=null",
            f"++prompts.literal={quote(e.prompt)}",
            f"seed={e.seed}",
        ]

    def place(self, evaluations: list[Evaluation], first_job: int) -> None:
        """Job numbers and run dirs, recorded relative to the sweep dir (search.db's own folder),
        so a sweep dir that is moved or copied keeps its images."""
        from genart.run_dirs import sweep_job_dir

        context, config = self.sweeper.hydra_context, self.sweeper.config
        for n, e in enumerate(evaluations):
            e.job = first_job + n
            path = sweep_job_dir(context, config, e.job, self.overrides(e)).absolute()
            e.run_dir = str(relative_to(path, self.sweep_dir.absolute()))

    def run(self, evaluations: list[Evaluation]) -> list[Outcome]:
        jobs = [self.overrides(e) for e in evaluations]
        try:
            self.sweeper.launcher.launch(jobs, initial_job_idx=evaluations[0].job)
        except Exception as err:  # noqa: BLE001 - a launcher that lost jobs (Ray): each job's own record decides
            log.error(f"the launcher raised {type(err).__name__}: {err}")
            error = f"{LOST}; the launcher raised {type(err).__name__}: {err}".splitlines()[0]
            return [self.outcome(e, lost=error) for e in evaluations]
        return [self.outcome(e) for e in evaluations]

    def recover(self, e: Evaluation) -> Outcome | None:
        """A job a killed search had launched: its outcome if it wrote one, else None (run it)."""
        if not e.run_dir or not (self.sweep_dir / e.run_dir / "result.json").is_file():
            return None
        return self.outcome(e)

    def outcome(self, e: Evaluation, lost: str = LOST) -> Outcome:
        found = read_outcome(self.sweep_dir / e.run_dir, lost)
        if found.image is not None:
            found.image = str(Path(e.run_dir) / "final.png")
        return found


def relative_to(path: Path, folder: Path) -> Path:
    try:
        return path.relative_to(folder)
    except ValueError:  # hydra.sweep.subdir outside the sweep dir: keep it absolute
        return path


def read_outcome(run_dir: Path, lost: str = LOST) -> Outcome:
    from genart.app import read_result

    result = read_result(run_dir)
    if not result:
        return Outcome("failed", error=lost)
    score = result.get("score")
    if result.get("status") == "ok" and isinstance(score, (int, float)) and math.isfinite(score):
        return Outcome("ok", float(score), str(run_dir / "final.png"))
    return Outcome("failed", error=result.get("error") or "the job failed (see its error.txt)")
