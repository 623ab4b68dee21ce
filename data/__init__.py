"""Datasets: what `--set` names (catalog.py), reading each source (loading.py: `get_data`,
`make_loader`), and the checks every source goes through (lists.py).

Kept free of imports so that the command-line parser reads the catalog without loading torch.
"""
