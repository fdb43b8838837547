"""The trainer's benchmarks, one module per subcommand of `python -m train.bench`: input,
train, checkpoint; common holds what they share."""
