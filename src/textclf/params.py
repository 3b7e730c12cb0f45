"""Composing conf/ into params.yaml, exactly as `dvc exp run` does (DVC's own Hydra helper).

    python -m textclf.params params.yaml [override ...]

The committed params.yaml is this composition with no overrides (tests keep them equal).
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig, OmegaConf

CONFIG_NAME = "config"


def conf_dir(root: str | Path | None = None) -> Path:
    """conf/ of the repository at ``root`` (default: the current directory)."""
    return (Path(root) if root is not None else Path.cwd()).resolve() / "conf"


def compose(
    overrides: list[str] | None = None, root: str | Path | None = None, config_name: str = CONFIG_NAME
) -> DictConfig:
    """The resolved config for ``overrides`` (Hydra override syntax: model=lstm, a.b=1);
    ``config_name`` picks another primary config of conf/ (tune.yaml for `textclf.tune`)."""
    with initialize_config_dir(str(conf_dir(root)), version_base=None):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []))
    OmegaConf.resolve(cfg)
    return cfg


def write_params(path: str | Path, overrides: list[str] | None = None, root: str | Path | None = None) -> None:
    """Writes the composition to ``path``; refuses (writing nothing) a config with credentials
    in a URL, since params.yaml is committed."""
    from dvc.utils.hydra import compose_and_dump

    from textclf.config import credential_problems
    from textclf.errors import TextclfError

    problems = credential_problems(OmegaConf.to_container(compose(overrides, root=root)))
    if problems:
        raise TextclfError("invalid config: " + "; ".join(problems))

    compose_and_dump(str(path), str(conf_dir(root)), None, CONFIG_NAME, "", list(overrides or []))


if __name__ == "__main__":
    from textclf.errors import run_cli

    if len(sys.argv) < 2:
        sys.exit(__doc__)
    run_cli("params", lambda: write_params(sys.argv[1], sys.argv[2:]), hydra=True)
