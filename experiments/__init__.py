"""One module per study: `get_config(arg) -> ConfigDict` and `run(config, workdir)`."""
