"""The parts train.py runs, one concept per file: config, build (the model to train), optim, step and
cuda_graph, checkpoint, hardware, report. train.py reads in run order and calls them."""
