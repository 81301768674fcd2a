"""NeRF grids: RGB + density voxel grids baked from posed photos (cameras.py reads the scenes, bake.py
fits a direct voxel radiance field and writes it) or voxelised from meshes (mesh.py, open3d)."""
