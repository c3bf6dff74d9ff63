"""The seams every layer shares, at the bottom of the stack (they import nothing else of dnafm):

- ``config``   keyword-only config dataclasses: validation, dict round trip, ``--set`` overrides
- ``errors``   the expected-error types (bad input, bad config, missing or existing paths, shards)
- ``files``    atomic writes (temporary name, then rename) for files and folders
- ``logs``     logging with a rank-0 filter, progress bars
- ``tracking`` the experiment tracker (MLflow) every stage logs through
- ``cliargs``  the flags every command shares (``--set``, ``--dry-run``, ``--no-mlflow``)

They sit inside ``datapipe`` because it is the bottom layer; ``kernels``, ``trainer``, ``eval`` and
``cluster`` all import them.
"""

__version__ = "0.1.0"
