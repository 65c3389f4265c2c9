"""Console entry points (Hydra apps over ``conf/``)."""

import dataclasses
from pathlib import Path

from hydra.core.config_store import ConfigStore

from ranking.data.synthetic.config import SyntheticConfig

#: Hydra config folder: the repository's ``conf/`` in a checkout, else the copy in the wheel.
_REPO_CONF = Path(__file__).resolve().parents[2] / "conf"
CONFIG_PATH = str(
    _REPO_CONF if _REPO_CONF.is_dir() else Path(__file__).resolve().parents[1] / "conf"
)

# The `world` group's files extend the SyntheticConfig defaults, so every SyntheticConfig field
# can be overridden (`world.n_users=1000`) and a misspelt key is an error.
ConfigStore.instance().store(
    group="world", name="synthetic_config", node=dataclasses.asdict(SyntheticConfig())
)
