"""Task kinds: what differs between sequence, span and token tasks (bitfit_exp/kinds/<kind>.py)."""
