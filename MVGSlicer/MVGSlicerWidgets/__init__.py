"""The parts of the MVGSlicer module that need the Slicer application (Qt): the Run panel the widget
embeds and the in-Slicer self-test.

A package, not files next to MVGSlicer.py: Slicer loads every .py file directly in a scripted
module folder as a module of its own. MVGSlicerLib, which must stay Qt-free, never imports it.
"""
