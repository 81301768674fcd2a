"""2-D images: the grid adapter with two spatial axes, and their pictures."""
