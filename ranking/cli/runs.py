"""Reopen a finished run: its resolved config and dataset."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def run_config(run: str | Path, data_path: str | None = None) -> tuple[Path, DictConfig]:
    run_dir = Path(run).resolve()
    cfg_file = run_dir / ".hydra" / "config.yaml"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file}: not found; is {run} a ranking-train run folder?")
    cfg = OmegaConf.load(cfg_file)
    if data_path:
        cfg.data.path = str(data_path)
    return run_dir, cfg
