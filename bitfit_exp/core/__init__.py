"""The ground floor every other package may use: errors (UserError), atomic writes, the config folder, the hub's
offline mode. It imports nothing of bitfit_exp above it."""
