"""Building blocks shared by every SAM-style model, written once for 2D and 3D (``spatial_dims``)."""
