"""The model side: loading checkpoints and tokenizers (`loading`), the families' parameter names (`architectures`),
which parameters each method trains (`methods`, one registry entry per method; `peft_methods`: LoRA, IA3,
BEFT and any peft config, registered here), patches of trained parameters
(`patch`), fingerprints of what a run read (`fingerprint`) and the device (`device`)."""

from bitfit_exp.model import peft_methods  # noqa: E402,F401 - registers lora, ia3, beft, peft in methods.METHODS
