"""The job tools around the course library: the command line, checkpoints, torchrun, the
notebook runner, the benchmark and the doctor."""
