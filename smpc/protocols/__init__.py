"""Protocols: plain functions on raw ring shares, exact modulo 2^64 (protocol layer).

Each takes the runtime's communicator and dealer explicitly and returns this
runtime's shares; none knows whether it runs simulated or distributed.
"""
