"""Point clouds (adapter.py and tokenizer.py import only the core and torch; io.py reads files with open3d)."""
