"""Runs made of instances and faults: experiments, version surveys, benchmarks, the interactive lab."""
