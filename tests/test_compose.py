"""config.compose reads command lines with Hydra's public API only; what it composes must be what Hydra composes
for the run, override for override (sweep expansion, value overrides applied to a shared composition)."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf

from bitfit_exp.config.compose import compose_jobs, expand, hydra_arguments, jobs_to_check
from bitfit_exp.core.config_dir import conf_dir

JOBS = [
    ["task=rte", "method=bitfit", "train.epochs=3", "optim.lr=0.002"],
    ["task=sst2", "+extra.note=hello", "++train.batch_size=4", "~optim.warmup_ratio"],
    ["task=stsb", "data={max_length: 64, padding: longest}", "seeds=[0,1]"],
    ["+experiment=table3", "task=mrpc", "lr_index=2", "++new_key=1"],
]


@pytest.mark.parametrize("job", JOBS, ids=lambda job: " ".join(job))
def test_a_job_composes_as_hydra_composes_it(job):
    [ours] = compose_jobs([job])
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        hydras = compose("config", overrides=job)
    assert OmegaConf.to_container(ours, resolve=True) == OmegaConf.to_container(hydras, resolve=True)


@pytest.mark.parametrize("job, message", [(["task=rte", "+train.epochs=3"], "already"),
                                          (["task=rte", "train.epoch=3"], "No match"),
                                          (["task=rte", "~train.nothing"], "does not exist")])
def test_bad_value_overrides_fail_as_in_hydra(job, message):
    with pytest.raises(HydraException, match=message):
        compose_jobs([job])
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"), pytest.raises(HydraException):
        compose("config", overrides=job)


def test_a_sweep_expands_in_hydras_order_with_the_last_value_of_a_key_winning():
    # the order and spelling of Hydra 1.3's basic sweeper (checked against BasicSweeper.split_arguments)
    jobs = expand(["task=rte,sst2", "seeds=[0]", "optim.lr=1e-3,2e-3", "task=cola,rte"])
    assert [" ".join(j) for j in jobs] == ["task=cola seeds=[0] optim.lr=0.001", "task=cola seeds=[0] optim.lr=0.002",
                                           "task=rte seeds=[0] optim.lr=0.001", "task=rte seeds=[0] optim.lr=0.002"]
    assert len(expand(["+experiment=table3"])) == 256  # the experiment's hydra.sweeper.params


def test_hydras_flags_are_read_before_hydra_runs():
    args = hydra_arguments().parse_args(["-m", "-cd", "/tmp", "task=rte"])
    assert args.multirun and args.config_dir == "/tmp" and args.overrides == ["task=rte"]
    assert jobs_to_check(["--cfg", "job", "task=rte"]) is None and jobs_to_check(["--info"]) is None
    assert jobs_to_check(["-m", "task=rte,sst2"]) == (["task=rte,sst2"], True)
