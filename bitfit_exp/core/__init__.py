"""The ground floor every other package may use: errors (UserError), atomic writes, the config folder, the hub's
offline mode, a job's CPU threads, the GPUs a local sweep shares. It imports nothing of bitfit_exp above it."""
