"""Training: synthetic pairs, the M-SIP loss, the loop and the `keynet train` command."""
