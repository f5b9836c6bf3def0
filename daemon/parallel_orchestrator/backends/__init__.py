"""Where jobs run: in this process's runner (``local``) or on a Dask cluster (``dask``)."""
