"""``zoo app``: a local web app to segment by clicking.

The logic is plain Python, testable without a browser: :mod:`zoo.app.views` (the three views of a volume, display
scaling, windows, overlays, screen pixel <-> voxel), :mod:`zoo.app.workspace` (the open image, the model, the
interactive sessions, undo/reset, export). :mod:`zoo.app.ui` lays them out with Gradio (the ``app`` extra).
"""
