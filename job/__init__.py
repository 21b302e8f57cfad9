"""Train, resume, evaluate and export CIFAR-10/100 classifiers on one device, one node or a cluster."""
import os

# TensorFlow's C++ start-up chatter (oneDNN notices, CPU feature lists) is noise in users' logs; must be set before
# TensorFlow is first imported, which any submodule may do.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
