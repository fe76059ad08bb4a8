"""Judging policies: the eval stage, reward and judge-free metrics, gold judges, best-of-n, over-optimisation fits, reports."""
