"""The rendered blocks of the published pages, one module per results file or part (see benchmarks/render.py)."""
