"""The training engine: learners (one agent, a vmapped population), the one loop that drives
them through a schedule of stages, and behaviour-policy training for the dataset factory."""
