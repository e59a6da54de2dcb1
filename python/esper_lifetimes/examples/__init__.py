"""Examples bundled with the package, so that ``esper-lifetimes demo`` runs from an
installed copy. Their frames count as user code in reports (``esper_lifetimes.sites``)."""
