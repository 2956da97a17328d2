"""ST-derived cell-type labels: the paper's clustering + marker voting + neoplastic refinement,
marker databases, baselines and evaluation."""
