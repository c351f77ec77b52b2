"""gridop: a Kubernetes operator that turns a cluster into a grid."""

__version__ = "0.1.0"
