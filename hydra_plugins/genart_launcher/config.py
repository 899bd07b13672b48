"""`hydra/launcher=joblib_safe`: registered here, as Hydra's own launcher plugins register theirs.

Not named `joblib`: a file or entry of that name would be merged with hydra-joblib-launcher's
schema (Hydra warns on every sweep) or overwritten by it, whichever plugin is scanned last.
"""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf


@dataclass
class JoblibSafeLauncherConf(JobLibLauncherConf):
    """hydra-joblib-launcher's settings; only n_jobs is used (jobs at once, -1: one per CPU)."""

    _target_: str = "hydra_plugins.genart_launcher.joblib_safe.JoblibSafeLauncher"


ConfigStore.instance().store(
    group="hydra/launcher", name="joblib_safe", node=JoblibSafeLauncherConf, provider="genart"
)
