"""Fail fast when the Hugging Face hub is out of reach, instead of retrying each request for ~20 seconds.

>>> from bitfit_exp.core.offline import hub_reachable
>>> isinstance(hub_reachable(timeout=0.5), bool)
True
"""

import os
import sys
import urllib.request

OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def is_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARS)


def hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout)
        return True
    except urllib.error.HTTPError:
        return True  # the server answered
    except (OSError, ValueError):
        return False


def go_offline() -> None:
    """Switch the Hugging Face libraries to their local caches (env vars plus their already-imported constants)."""
    for var in OFFLINE_VARS:
        os.environ[var] = "1"
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.constants as hc

        hc.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        import datasets.config as dc

        dc.HF_HUB_OFFLINE = True
        dc.HF_DATASETS_OFFLINE = True
    if "transformers" in sys.modules:
        import transformers.utils.hub as th

        if hasattr(th, "_is_offline_mode"):
            th._is_offline_mode = True


def settle_offline_mode() -> bool:
    """Go offline when the hub cannot be reached; returns True when running offline."""
    if is_offline():
        return True
    if not hub_reachable():
        print("note: the Hugging Face hub is unreachable; using local files and caches only", file=sys.stderr)
        go_offline()
        return True
    return False
