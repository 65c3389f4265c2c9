"""``ranking-data out=DIR``: build a dataset directory (synthetic world by default)."""

from __future__ import annotations

import shutil
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from ranking.cli import CONFIG_PATH
from ranking.data.errors import main_guard

MOVIELENS = ("movielens-1m", "movielens-100k")


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

        if cfg.raw is None:
            raise SystemExit(f"error: source={cfg.source} needs raw=DIR (the folder of its files)")
        schema = write_movielens(cfg.source, cfg.raw, out, hist_len=cfg.hist_len)
    else:
        raise SystemExit(
            f"error: unknown source {cfg.source!r} (available: synthetic, {', '.join(MOVIELENS)})"
        )
    print(f"dataset {schema.name!r} written to {out}")


if __name__ == "__main__":
    main()
