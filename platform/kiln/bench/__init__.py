"""Load generation for `kiln bench` and `make bench`: not needed to train or serve.

load.py    closed- and open-loop HTTP load, its summary and latency histogram
soak.py    a long fixed-rate run reported per interval, with each replica's memory
"""
