"""The loops: the only modules that know the order of the stages."""
