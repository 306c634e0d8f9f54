"""Instances and the lab that hands them out: backends, warm snapshots, the run directories and the cache they leave."""
