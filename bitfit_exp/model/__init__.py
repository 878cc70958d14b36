"""The model side: loading checkpoints and tokenizers (`loading`), the families' parameter names (`architectures`),
which parameters each method trains (`methods`, one registry entry per method), patches of trained parameters
(`patch`), fingerprints of what a run read (`fingerprint`) and the device (`device`)."""
