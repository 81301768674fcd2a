"""Audio: fbank spectrograms as 2-D grids (adapter.py imports only the core; io.py reads waveforms with soundfile)."""
