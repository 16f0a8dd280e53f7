"""hybrid-rl: offline RL (CQL, IQL) under damaged D4RL-style datasets."""
__version__ = "0.1.0"
