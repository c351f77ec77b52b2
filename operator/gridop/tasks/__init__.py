"""The task data plane: Redis layout and state machine, the sweeper, and the worker runtime."""
