"""Where the bytes of a training step go: measured (profiler.memory) and predicted from the config."""
