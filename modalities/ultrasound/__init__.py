"""B-mode ultrasound: images and cine loops (adapter.py imports only the core; io.py reads files)."""
