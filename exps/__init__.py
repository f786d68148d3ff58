"""The shipped experiment file, ``exps_params.cfg`` (package data, so a non-editable install
finds it too: :func:`sparse_nte.cli.shipped_config`)."""
