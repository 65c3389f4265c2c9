"""``ranking-data out=DIR``: build a dataset directory (synthetic world by default)."""

from __future__ import annotations

import shutil
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from ranking.cli import CONFIG_PATH
from ranking.data.errors import main_guard

MOVIELENS = ("movielens-1m", "movielens-100k")
SOURCES = ("synthetic", *MOVIELENS, "ali-ccp", "open-bandit", "window")


@hydra.main(config_path=CONFIG_PATH, config_name="make_data", version_base="1.3")
@main_guard
def main(cfg: DictConfig) -> None:
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise SystemExit(f"error: {out} exists and is not empty (overwrite=true replaces it)")
        shutil.rmtree(out)
    if cfg.source == "synthetic":
        from ranking.data.synthetic import SyntheticConfig, generate

        schema = generate(out, SyntheticConfig(**OmegaConf.to_container(cfg.world, resolve=True)))
    elif cfg.source in MOVIELENS:
        from ranking.data.adapters.movielens import write_movielens

        schema = write_movielens(cfg.source, _raw(cfg), out, hist_len=cfg.hist_len)
    elif cfg.source == "ali-ccp":
        from ranking.data.adapters.ali_ccp import write_ali_ccp

        schema = write_ali_ccp(_raw(cfg), out)
    elif cfg.source == "open-bandit":
        from ranking.data.adapters.open_bandit import write_open_bandit

        schema = write_open_bandit(
            _raw(cfg), out, campaign=cfg.campaign, policies=tuple(cfg.policies)
        )
    elif cfg.source == "window":
        from ranking.data.window import write_window

        schema, kept = write_window(_raw(cfg), out, cfg.window["from"], cfg.window["to"])
        print(
            f"train rows {kept.rows} of {kept.total} (the source's train spans times "
            f"{kept.first}..{kept.last})"
        )
    else:
        raise SystemExit(f"error: unknown source {cfg.source!r} (available: {', '.join(SOURCES)})")
    print(f"dataset {schema.name!r} written to {out}")


def _raw(cfg: DictConfig) -> str:
    if cfg.raw is None:
        raise SystemExit(f"error: source={cfg.source} needs raw=DIR (the folder of its files)")
    return str(cfg.raw)


if __name__ == "__main__":
    main()
