"""Export for TF Serving (export.py), its configuration files (config.py), and the serving contract."""
