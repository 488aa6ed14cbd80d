"""The parts of scripts/soak.py, which is their entry point (CLI and orchestration).

In the order of a run: server.py starts and reads the server process; cases.py builds
valid requests and their torch reference answers; load.py sends them, with faults, on
every transport into outcomes.py's Tally; samples.py samples the server every second;
report.py judges growth and writes the summary, CSV and plot.
"""
