"""One module per dataset family; each has a builder that returns a `DataBundle`
(re-exported by `betaweighter.data`) and the raw reader it is built on."""
