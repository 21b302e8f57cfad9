"""`python -m bench.run`: the benchmark suite (training loop vs Keras fit, input pipeline, checkpoints, memory).

Every figure is a ratio against a baseline measured in the same run, with trials interleaved A B A B after a warm-up.
Each side of a comparison runs in its own worker process (bench.worker), so each has its own TensorFlow runtime and
its own peak resident memory, and only one side runs at a time. docs/performance.md explains the figures.
"""
