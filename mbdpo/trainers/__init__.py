"""The training loops: online, evaluation."""
