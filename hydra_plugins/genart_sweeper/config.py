"""`hydra/sweeper=evolve`: registered here, as Hydra's own sweeper plugins register theirs."""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class EvolveSweeperConf:
    """The search itself is configured in conf/search/ (`+search=unseen`); this only resumes."""

    _target_: str = "hydra_plugins.genart_sweeper.evolve.EvolveSweeper"
    resume: str | None = None  # a search's sweep dir (it holds search.db): continue that search


ConfigStore.instance().store(
    group="hydra/sweeper", name="evolve", node=EvolveSweeperConf, provider="genart"
)
