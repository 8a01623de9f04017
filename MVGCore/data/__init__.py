"""Training data: dataset layouts and open samples (``sources``, ``open_samples``), prepare, samplers.

Kept free of imports so that training from a prepared slice store does not load SimpleITK.
"""
