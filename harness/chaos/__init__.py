"""Chaos at scale: the Chaos Monkey API and its client, groups of instances, auto scaling."""
