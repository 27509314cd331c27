"""Where events come from: the event and item contract, the landing zone, the synthetic generator and real-data adapters."""
