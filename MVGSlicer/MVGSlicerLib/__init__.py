"""Qt-free computation of the MVGSlicer module: MRML <-> arrays, prompts, jobs, model process, models,
install.

Scene and Slicer logic objects are passed in, so all of it runs against slicer-core in plain pytest.
"""
