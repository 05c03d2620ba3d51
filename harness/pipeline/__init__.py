"""The run pipeline: pre-flight, the run directory and its lock, fingerprints and resuming, training, the stages of
`harness run` (prepare, train, evaluate, cost), the executors (Slurm, local), signals, the results file."""
