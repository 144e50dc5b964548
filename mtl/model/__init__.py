"""The network (shared encoder + three heads) and its multi-task loss."""
