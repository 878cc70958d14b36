"""Both directions of the BEFT bridge together: a patch exported with `bitfit-export --format peft` and then served
as an adapter folder (bitfit-serve's peft reader) answers exactly as the patch it came from, labels included, so a
shared result comes back to bitfit-serve unchanged."""

import pytest
import torch
from test_peft_export import EXPRESSIBLE, perturbed_run
from test_serve import ITEMS

from bitfit_exp.serving.adapters import AdapterOptions, adapter_reader
from bitfit_exp.serving.engine import MultiTaskEngine, find_patches
from bitfit_exp.serving.peft_export import export_peft


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_an_exported_adapter_serves_as_its_patch(family, request, tmp_path, glue_dir):
    model_dir = request.getfixturevalue(f"tiny_{family}_dir")
    runs = [perturbed_run(tmp_path / "runs", model_dir, task, method, seed, *extra)
            for seed, (method, task, extra) in enumerate(EXPRESSIBLE)]
    patches = find_patches([str(r) for r in runs])
    adapters = [export_peft(str(r), tmp_path / f"peft-{p.task}-{p.method}") for r, p in zip(runs, patches, strict=True)]
    specs = [f"a{k}={a}" for k, a in enumerate(adapters)]
    served = find_patches(specs, other=adapter_reader(AdapterOptions.parse()))
    for patch, adapter in zip(patches, served, strict=True):
        assert (adapter.task, adapter.method, adapter.max_length) == (patch.task, patch.method, patch.max_length)
        assert adapter.label_names == patch.label_names and adapter.text_fields == patch.text_fields
    engine = MultiTaskEngine([*patches, *served])  # one backbone: run patches and their adapters mixed per batch
    for k, patch in enumerate(patches):
        items = [i for i in ITEMS if ("text_pair" in i) == (len(patch.text_fields) == 2)]
        ours = engine.predict([{**i, "task": patch.name} for i in items])
        theirs = engine.predict([{**i, "task": f"a{k}"} for i in items])
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(torch.tensor(b["logits"]), torch.tensor(a["logits"]), rtol=1e-5, atol=1e-5)
            assert a.get("label") == b.get("label")
