"""Evolutionary prompt search (the "Gallery of Unseen" method, docs/search.md).

- `decoding`: a genome (one probability per prompt piece) → a sampled prompt.
- `store`: the search's SQLite database (search.db in the sweep dir), written only by the sweeper.
- `evolution`: the ask/tell loop around a nevergrad optimiser, rebuilt on resume by replaying it.
- `hydra_plugins/genart_sweeper`: `hydra/sweeper=evolve`, which runs each generation's
  evaluations as jobs through the configured launcher.
"""
