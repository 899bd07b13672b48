"""genart's Hydra sweeper: `hydra/sweeper=evolve`, the evolutionary prompt search (genart.search).
Hydra instantiates sweepers only from the hydra_plugins package."""
