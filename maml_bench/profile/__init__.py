"""`maml-bench profile`: what second order costs, per paper configuration, on this device.

configs.py (the paper's configurations as data), measure.py (time, memory, FLOPs and operators
of one meta-iteration), peak.py (the device's measured matmul and convolution peak), sweep.py
(the sweep, its progress and `run_profile`), report.py (markdown, CSV, figures). Nothing is
imported here, so that the CLI can read the configuration names without loading torch.
"""
