"""absl flag definitions for the command-line tools (run_train.py, run_sample.py).

The library (tf_score/) never imports absl.flags; only this package and the run_* scripts do.
"""
