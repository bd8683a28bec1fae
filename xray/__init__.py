"""The `xray` console script (see ``xray.cli``)."""
