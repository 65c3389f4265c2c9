"""Console entry points (Hydra apps over ``conf/``)."""

from pathlib import Path

#: Hydra config folder: the repository's ``conf/`` in a checkout, else the copy in the wheel.
_REPO_CONF = Path(__file__).resolve().parents[2] / "conf"
CONFIG_PATH = str(_REPO_CONF if _REPO_CONF.is_dir() else Path(__file__).resolve().parents[1] / "conf")
