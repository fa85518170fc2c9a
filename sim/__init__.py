"""The simulated study (``multiref simulate``): simulated speakers play the real server against
a small listener that learns on a CPU, through the real worker, retrospect, train, deploy and
report. Nothing in the product imports this package."""
