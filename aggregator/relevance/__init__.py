"""The learned relevance score: a second stage behind a topic's query.

The query is the net users edit; a topic's model scores what the net caught, and its thresholds
decide what alerts now and what waits in the digest as "possibly relevant".

- :mod:`.features`: the terms a model reads of an item (pure).
- :mod:`.model`: an exported model, loaded and scored in pure Python (no numpy, no scikit-learn).
- :mod:`.train`: training, cross-validation and export; the only module importing scikit-learn,
  numpy and scipy, and only ``aggregator train`` imports it.
"""
