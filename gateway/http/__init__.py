"""The HTTP edge: the three listeners (ingress, sidecar, admin) and what they serve.

Turns requests into commands for the engine and reads its run view; holds no run state.
"""
