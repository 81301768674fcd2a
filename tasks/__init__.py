"""The shared recipe body: options and command line, the run, and its tasks (pretrain, classify, segment)."""
