"""The lab's presentation layer: server-rendered plots (plots.py, figures.py) and the
page (static/). It sits beside the transports and reaches ops only through the engine.

Kept free of imports: the plot worker process imports ``gradserve.lab.figures`` and
must not pull torch in through this package.
"""
