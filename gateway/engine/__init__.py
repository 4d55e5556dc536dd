"""The engine: owns every run's state and drives its attempts, timers and waits.

Called by the HTTP edge (`gateway.http`); calls `gateway.upstream` and `gateway.store`.
"""
