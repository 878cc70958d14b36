"""Where the Hydra config folder is (conf/ of a source checkout, else the copy packaged as bitfit_exp/conf), and the
resolver its YAML files use: `${index:${method.lr_grid},${lr_index}}` lets a sweep walk each method's own grid.

>>> from pathlib import Path
>>> (Path(conf_dir()) / "config.yaml").is_file()
True
"""

from pathlib import Path

from omegaconf import OmegaConf

# `${index:${method.lr_grid},${lr_index}}` lets a sweep walk each method's own learning-rate grid.
OmegaConf.register_new_resolver("index", lambda seq, i: seq[int(i)], replace=True)


def conf_dir() -> str:
    """conf/ of a source checkout (editable install), else the copy packaged as bitfit_exp/conf."""
    package = Path(__file__).resolve().parents[1]
    repo = package.parent / "conf"
    return str(repo if (repo / "config.yaml").is_file() else package / "conf")
