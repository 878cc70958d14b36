"""Training: the runner (a job's settings and seeds, records, resume), the one-by-one trainer (`trainer`), the
packed trainer (`packed`: many settings in one forward pass), epoch checkpoints (`checkpoints`), optimizers
(`optim`), claims on seeds for concurrent jobs (`claims`) and GPU leases for a local sweep's jobs (`gpu_lease`)."""
