"""Paper settings as ml_collections configs, importable as `jaxdistill.configs.NAME`."""
