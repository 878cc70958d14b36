"""The paper's names for what the tables and figures show: tasks and table columns, models, methods.

>>> row_label("bert_base", "bm2_bq"), row_label("minilm", "bitfit", "train.batch_size=16")
('BERT-base bm2,bq', 'MiniLM-L6 BitFit [train.batch_size=16]')
"""

HEADERS = {"qnli": "QNLI", "sst2": "SST-2", "mnli_m": "MNLI-m", "mnli_mm": "MNLI-mm", "cola": "CoLA", "mrpc": "MRPC",
           "stsb": "STS-B", "rte": "RTE", "qqp": "QQP", "avg": "Avg"}
TASKS = {**HEADERS, "mnli": "MNLI", "wnli": "WNLI", "squad": "SQuAD", "pos": "POS"}
MODELS = {"bert_base": "BERT-base", "bert_large": "BERT-large", "roberta_base": "RoBERTa-base", "minilm": "MiniLM-L6"}
METHODS = {"full": "Full-FT", "bitfit": "BitFit", "bm2_bq": "bm2,bq", "bm2": "bm2", "bq": "bq", "frozen": "Frozen",
           "rand_uniform": "rand uniform", "rand_rowcol": "rand row/col", "biases": "biases", "beft": "BEFT",
           "lora": "LoRA", "ia3": "IA3", "peft": "peft"}


def row_label(model: str, method: str, variant: str = "") -> str:
    text = f"{MODELS.get(model, model)} {METHODS.get(method, method)}"
    return f"{text} [{variant}]" if variant else text
