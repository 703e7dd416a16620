"""Reference models for medge: synthetic data generators, training scripts, trained ONNX files.

Not an installed package: scripts and tests import it from the repository root. Everything here is
synthetic and for demonstration only; nothing in this folder is fit for clinical use.
"""
