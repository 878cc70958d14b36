"""Task data below the task kinds: reading files (`files`), checking and resolving their columns and labels
(`checks`), carving dev splits (`carve`) and batching encoded rows (`batches`). Loading a task's splits asks the
task's kind to check each file, so it sits above the kinds: bitfit_exp.kinds.splits."""
