"""The training loop (callbacks, no printing), evaluation, worker threads and torch.distributed."""
