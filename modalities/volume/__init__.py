"""3-D volumes (CT, MRI): adapter.py imports only the core; io.py reads NIfTI; transforms.py holds
the MONAI pipelines; segmentation.py the UNETR segmenter."""
