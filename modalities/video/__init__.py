"""Video: RGB clips as tubelet grids (io.py reads and samples clips with decord; synthetic.py writes clips)."""
