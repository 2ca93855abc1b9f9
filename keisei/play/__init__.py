"""Playing games: ``players`` (random, heuristic, network players), ``match`` (refereed matches),
``search`` (MCTS with mate search), ``usi_client`` (a USI engine as a player), ``usi_engine`` (a
network as a USI engine)."""
