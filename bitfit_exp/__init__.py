"""bitfit-exp: reproducible BitFit (bias-only fine-tuning) experiments on GLUE.

    bitfit-run task=rte method=bitfit model=minilm data.dir=../shared/data/glue seeds=[0]
"""

__version__ = "0.1.0"
