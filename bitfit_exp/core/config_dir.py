"""Where the Hydra config folder is (conf/ of a source checkout, else the copy packaged as bitfit_exp/conf), and the
resolvers its YAML files use: `${index:${method.lr_grid},${lr_index}}` lets a sweep walk each method's own grid,
`${gpu_jobs_or:2}` runs one local sweep job per GPU.

>>> from pathlib import Path
>>> (Path(conf_dir()) / "config.yaml").is_file()
True
"""

from pathlib import Path

from omegaconf import OmegaConf

from bitfit_exp.core.gpus import jobs_for_gpus

# `${index:${method.lr_grid},${lr_index}}` lets a sweep walk each method's own learning-rate grid.
OmegaConf.register_new_resolver("index", lambda seq, i: seq[int(i)], replace=True)
# `n_jobs: ${gpu_jobs_or:2}` (conf/hydra/launcher/local.yaml): one parallel job per visible GPU, else 2.
OmegaConf.register_new_resolver("gpu_jobs_or", lambda default: jobs_for_gpus(default), replace=True)


def conf_dir() -> str:
    """conf/ of a source checkout (editable install), else the copy packaged as bitfit_exp/conf."""
    package = Path(__file__).resolve().parents[1]
    repo = package.parent / "conf"
    return str(repo if (repo / "config.yaml").is_file() else package / "conf")
