"""Many runs at once: multi-seed sweeps (sweep.py), where their cells run (launch.py), and the rivals and
ablations study of notebook 08 (rivals.py)."""
