"""Where results came from, as the records say: package versions, git SHAs, devices, hosts, when, and the device
hours spent; and the commands that reproduce a setting (bitfit-report's provenance section and setting cards).

A packed record (`train.packed`: k settings in one forward pass) stamps the pack's wall time as its own, so each of
the k records counts a k-th of it.

>>> record = {"env": {"device": "cuda:0", "device_name": "NVIDIA H100", "git_sha": "abc", "git_dirty": False,
...           "torch": "2.7", "bitfit_exp": "0.1.0"}, "timings": {"total_s": 7200.0}, "packed": {"settings": 2}}
>>> p = summarize([(None, record)])
>>> p["device_hours"], p["devices"]
({'GPU': 1.0}, {'NVIDIA H100 (cuda:0)': 1})
>>> print(rerun_command("minilm", "rte", "bitfit", 0.001, [0, 1], {"train.batch_size": 16, "task.name": "rte"}))
bitfit-run model=minilm task=rte method=bitfit optim.lr=0.001 'seeds=[0,1]' train.batch_size=16
"""

import shlex
from collections import Counter

from bitfit_exp.results.rerun import override

VERSION_KEYS = ("bitfit_exp", "torch", "transformers", "datasets", "python")


def _kind(device: str) -> str:
    return "GPU" if device.startswith("cuda") else "CPU" if device.startswith("cpu") else device.split(":")[0].upper()


def summarize(found) -> dict:
    """Counts over records.scan's records: versions, git SHAs (+dirty), devices, hosts, first and last finish time,
    device-hours per kind (GPU, CPU, MPS) and how many records have no timing."""
    versions, shas, devices, hosts = Counter(), Counter(), Counter(), Counter()
    hours, untimed, times = Counter(), 0, []
    for _, record in found:
        env, timings = record.get("env") or {}, record.get("timings") or {}
        versions[", ".join(f"{k} {env[k]}" for k in VERSION_KEYS if env.get(k)) or "unknown"] += 1
        sha = env.get("git_sha") or "unknown"
        shas[sha + (" (uncommitted changes)" if env.get("git_dirty") else "")] += 1
        device = str(env.get("device") or "unknown")
        devices[f"{env.get('device_name') or 'unknown'} ({device})"] += 1
        hosts[env.get("hostname") or "unknown"] += 1
        total = timings.get("total_s")
        if isinstance(total, int | float):
            share = int((record.get("packed") or {}).get("settings") or 1)
            hours[_kind(device)] += total / 3600 / share
        else:
            untimed += 1
        if timings.get("finished_at"):
            times.append(str(timings["finished_at"]))
    return {"versions": dict(versions.most_common()), "git": dict(shas.most_common()),
            "devices": dict(devices.most_common()), "hosts": len(hosts), "device_hours": dict(hours),
            "untimed": untimed, "first": min(times, default=None), "last": max(times, default=None)}


def rerun_command(model: str, task: str, method: str, lr: float, seeds, changes: dict,
                  experiment: str | None = None) -> str:
    """The bitfit-run command line of a setting: the experiment's sweep of its cell, or the default config with
    `changes` (flat keys that differ from it; the names already on the line are skipped) at its lr and seeds."""
    if experiment:
        return f"bitfit-run +experiment={experiment} model={model} task={task} method={method} --multirun"
    words = [f"model={model}", f"task={task}", f"method={method}", f"optim.lr={lr:g}",
             override("seeds", sorted(int(s) for s in seeds))]
    named = {"model.name", "task.name", "method.name", "optim.lr"}
    words += [override(k, v) for k, v in changes.items() if k not in named]  # quoted as Hydra reads them back
    return "bitfit-run " + " ".join(shlex.quote(w) for w in words)
