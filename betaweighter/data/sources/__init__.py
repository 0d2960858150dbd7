"""One module per dataset family; each has a builder that returns a `DataBundle`
(re-exported by `betaweighter.data`) and the raw reader it is built on."""

__all__: list[str] = []  # each source module is imported by name
