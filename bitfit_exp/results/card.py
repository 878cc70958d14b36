"""The model card (`README.md`) of an exported run: base model, task, method, lr, seeds, the dev score of this seed and
mean±std over the setting's seeds, %trainable, the checkpoint and data fingerprints, the `bitfit-run` command that
trains it again, how to load it, and the paper's citation. Its metadata (`huggingface_hub.ModelCardData`) carries a
`model-index` with this seed's dev score, which huggingface_hub's own parser reads back.

>>> seed_scores([{"seed": 0, "score": 0.5}, {"seed": 1, "score": 0.7}, {"seed": 2, "score": None}])
(60.0, 14.142135623730951, [0, 1], [2])
"""

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from bitfit_exp.model.peft_methods import PEFT_TYPES, is_peft_method
from bitfit_exp.results.records import DONE, RECORD, CorruptRecord, read_record
from bitfit_exp.results.rerun import rerun_command

CITATION = """@inproceedings{ben-zaken-etal-2022-bitfit,
    title = "{B}it{F}it: Simple Parameter-efficient Fine-tuning for Transformer-based Masked Language-models",
    author = "Ben Zaken, Elad  and
      Goldberg, Yoav  and
      Ravfogel, Shauli",
    booktitle = "Proceedings of the 60th Annual Meeting of the Association for Computational Linguistics (Volume 2: Short Papers)",
    month = may,
    year = "2022",
    address = "Dublin, Ireland",
    publisher = "Association for Computational Linguistics",
    url = "https://aclanthology.org/2022.acl-short.1",
    doi = "10.18653/v1/2022.acl-short.1",
    pages = "1--9",
}"""


@dataclass
class Base:
    """The checkpoint the exported folder applies to: a hub name, or a local folder (then no `base_model` metadata,
    which the Hub accepts for repo ids only)."""

    name_or_path: str
    on_hub: bool


def dev_score(record: dict) -> float | None:
    """The record's main dev score (0-1 scale as recorded) at its selected epoch; None when it has none."""
    main = record.get("main")
    row = record.get(main["select"]) if main else None
    value = (((row or {}).get("dev") or {}).get(main["split"]) or {}).get(main["metric"]) if main else None
    return None if value is None or not math.isfinite(value) else float(value)


def sibling_scores(record_path: Path) -> list[dict]:
    """Seed and dev score of every finished (or diverged) seed of the record's setting (its seed<k>/ siblings)."""
    out = []
    for path in sorted(Path(record_path).parent.parent.glob(f"seed*/{RECORD}")):
        try:
            record = read_record(path)
        except CorruptRecord:
            continue  # a damaged sibling is no score; bitfit-plan and bitfit-tables report it
        if record.get("status") in DONE:
            out.append({"seed": int(record["seed"]), "score": dev_score(record)})
    return out


def seed_scores(rows: list[dict]) -> tuple[float | None, float | None, list[int], list[int]]:
    """(mean, std with ddof=1 (0 for one seed), in %; seeds with a score; seeds without one)."""
    scored = [r for r in rows if r["score"] is not None]
    values = [100 * r["score"] for r in scored]
    mean = statistics.fmean(values) if values else None
    std = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
    return mean, std, [r["seed"] for r in scored], [r["seed"] for r in rows if r["score"] is None]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def eval_result(record: dict, score: float):
    """This seed's dev score as a model-index entry (GLUE tasks name the hub dataset and config)."""
    from huggingface_hub import EvalResult

    task, data, main = record["config"]["task"], record["config"]["data"], record["main"]
    glue = task.get("glue_name")
    return EvalResult(task_type="text-classification", task_name=task["name"],
                      dataset_type=data["hub_name"] if glue else task["name"],
                      dataset_name=f"GLUE {glue}" if glue else task["name"],
                      dataset_config=task["name"] if glue else None, dataset_split=main["split"],
                      metric_type=main["metric"], metric_name=main["metric"], metric_value=score)


def loading_snippet(fmt: str, out_name: str, base: Base, record: dict) -> str:
    """Python that loads the exported folder with plain peft or transformers."""
    task = record["config"]["task"]
    labels = list(task.get("label_names") or [])
    n = int(task["num_labels"])
    if fmt == "merged":  # not pipeline(): transformers 5.0 cannot import its pipelines with numpy 1.23 (our floors)
        return ("import torch\nfrom transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
                f"model = AutoModelForSequenceClassification.from_pretrained(\"{out_name}\").eval()\n"
                f"tokenizer = AutoTokenizer.from_pretrained(\"{out_name}\")  # truncates at the run's max_length\n"
                "with torch.no_grad():\n"
                "    logits = model(**tokenizer(\"...\", truncation=True, return_tensors=\"pt\")).logits"
                + ("\nprint(model.config.id2label[int(logits.argmax())])" if n > 1 else ""))
    label_args = f", id2label={dict(enumerate(labels))!r}" if len(labels) == n > 1 else ""
    problem = ', problem_type="regression"' if n == 1 else ""
    return ("import torch\nfrom peft import PeftModel\nfrom transformers import AutoModelForSequenceClassification, "
            "AutoTokenizer\n\n"
            f"base = AutoModelForSequenceClassification.from_pretrained(\n    \"{base.name_or_path}\", num_labels={n}"
            f"{label_args}{problem})\n"
            f"model = PeftModel.from_pretrained(base, \"{out_name}\").eval()  # or .merge_and_unload()\n"
            f"tokenizer = AutoTokenizer.from_pretrained(\"{out_name}\")  # truncates at the run's max_length\n"
            "with torch.no_grad():\n"
            "    logits = model(**tokenizer(\"...\", truncation=True, return_tensors=\"pt\")).logits")


def model_card(record_path: Path, record: dict, fmt: str, base: Base, out_name: str):
    """The huggingface_hub ModelCard of the run at `record_path` exported as `fmt` ("peft" or "merged")."""
    from huggingface_hub import ModelCard, ModelCardData

    config, setting = record["config"], record["setting"]
    task, method = config["task"]["name"], config["method"]["name"]
    metric = (record.get("main") or {}).get("metric") or config["task"]["metric"]
    score = dev_score(record)
    mean, std, scored, missing = seed_scores(sibling_scores(record_path))
    params = record.get("params") or {}
    fingerprints = record.get("fingerprints") or {}
    command, note = rerun_command(record)
    peft_run = is_peft_method(method)  # lora, ia3, beft, peft: the run's own adapter folder (model/peft_methods.py)
    peft_type = config["method"].get("peft_type") or PEFT_TYPES.get(method)
    data = ModelCardData(
        model_name=f"{setting['model']}-{task}-{method}", base_model=base.name_or_path if base.on_hub else None,
        library_name="peft" if fmt == "peft" else "transformers", pipeline_tag="text-classification",
        tags=(["bitfit-exp", method, "peft"] if peft_run else
              ["bitfit", "bias-only-fine-tuning", *(["beft", "peft"] if fmt == "peft" else [])]),
        datasets=[config["data"]["hub_name"]] if config["task"].get("glue_name") else None,
        metrics=[metric],
        eval_results=[eval_result(record, score)] if score is not None else None)
    where = "a Hugging Face Hub model" if base.on_hub else "a local folder, not a Hub name: load it from there"
    what = ("a [peft](https://github.com/huggingface/peft) BEFT adapter: the trained bias changes of Linear layers "
            "as BEFT vectors, the trained LayerNorms and the task head as `modules_to_save`" if fmt == "peft" else
            "the whole model with the trained values merged in (loads with plain transformers)")
    if peft_run:
        what = (f"the [peft](https://github.com/huggingface/peft) {peft_type} adapter the run trained (peft's "
                f"`save_pretrained`), the task head in `modules_to_save`")
    trainable = (f"{params['trainable_encoder']:,} encoder parameters ({params['pct_encoder']:.4f}% of its "
                 f"{params['encoder_total']:,}) and the head's {params['head']:,}"
                 if {"trainable_encoder", "pct_encoder", "encoder_total", "head"} <= set(params) else "not recorded")
    seeds_line = (f"{_pct(mean)} ± {_pct(std)} over {len(scored)} seed{'s' * (len(scored) != 1)} "
                  f"({', '.join(map(str, scored))})" if scored else "no seed has a dev score")
    if missing:
        seeds_line += f"; without a score: seeds {', '.join(map(str, missing))}"
    body = f"""
# {data.model_name}

{'Parameter-efficient' if peft_run else 'BitFit ([Ben Zaken et al., ACL 2022](https://aclanthology.org/2022.acl-short.1))'} fine-tuning, method `{method}`, of
`{base.name_or_path}` on `{task}`, trained with bitfit-exp. This folder is {what}.

| | |
| --- | --- |
| base model | `{base.name_or_path}` ({where}) |
| task | `{task}` ({config['task']['num_labels']} output{'s' * (int(config['task']['num_labels']) != 1)}; labels: {', '.join(config['task'].get('label_names') or []) or 'regression'}) |
| method | `{method}` |
| learning rate | {config['optim']['lr']:g} ({config['optim']['name']}, batch size {config['train']['batch_size']}, {_plural(len(record.get('epochs') or []), 'epoch')} run, epoch {record.get('chosen_epoch')} kept) |
| dev {metric} (this seed, {record['seed']}) | {_pct(None if score is None else 100 * score)} |
| dev {metric} (mean ± std over seeds) | {seeds_line} |
| trainable | {trainable} |
| checkpoint fingerprint | `{fingerprints.get('model', 'not recorded')}` |
| data fingerprint | `{(fingerprints.get('data') or {}).get('digest', 'not recorded')}` |
| setting | `{setting['dir']}` (seed {record['seed']}) |

## Train it again

```bash
{command}
```
{f'{chr(10)}Note: {note}.{chr(10)}' if note else ''}
## Load it

```python
{loading_snippet(fmt, out_name, base, record)}
```

## Citation

```bibtex
{CITATION}
```
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def write_card(out: Path, record_path: Path, fmt: str, base: Base, hub_id: str | None = None) -> Path:
    """Write the card as `out`/README.md (replacing the one peft writes); its snippet loads `hub_id` if given (the
    repository the folder goes to), else the folder. Returns the card's path."""
    record = read_record(Path(record_path))
    path = Path(out) / "README.md"
    model_card(record_path, record, fmt, base, hub_id or Path(out).name).save(path)
    return path
