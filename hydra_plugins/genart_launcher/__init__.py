"""genart's Hydra launchers (Hydra instantiates launchers only from hydra_plugins)."""
