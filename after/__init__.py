"""after: label-efficient speech emotion recognition (task-adaptive pre-training + active
learning)."""

__version__ = "0.1.0"
