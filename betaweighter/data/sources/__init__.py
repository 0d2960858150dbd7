"""One module per dataset family; each has a builder that returns a `DataBundle`
(re-exported by `betaweighter.data`) and the raw reader it is built on.

A builder is registered for the config's ``data.name`` with `register_data_source`, the
one place its name is written; the registry says which `DataSection` keys the builder
takes (`fields`), which of them it cannot do without (`required`, each with a hint), and
``data.options`` are its remaining keyword arguments. A pool of one's own is a builder in
one's own package, decorated the same way and listed in ``experiment.imports``::

    @register_data_source("my_pool", fields=("root",), required={"root": "the folder"})
    def my_pool(root, *, seed=0, image_size=32) -> DataBundle: ...
"""

from __future__ import annotations

from betaweighter.registry import Registry

__all__ = ["DATA_SOURCES", "register_data_source"]

#: The data sources ``data.name`` chooses from; each entry's meta holds ``fields`` (the
#: `DataSection` keys passed by name) and ``required`` (key -> what it must name).
DATA_SOURCES = Registry("data source", "data.name", package="betaweighter.data.sources",
                        decorator="register_data_source")


def register_data_source(name: str, *, fields: tuple[str, ...] = (),
                         required: dict[str, str] | None = None):  # noqa: ANN201
    """Register a `DataBundle` builder as ``data.name: <name>``. `fields` are the
    `DataSection` keys (root, target, pool_root, target_root, download) it takes as keyword
    arguments; `required` maps those it needs to a hint shown when one is missing. The
    builder must take ``seed``, and takes ``splits`` if a resumed run should reuse them."""
    unknown = set(required or {}) - set(fields)
    if unknown:
        raise ValueError(f"data source {name!r}: required keys {sorted(unknown)} are not "
                         "among its fields")
    return DATA_SOURCES.register(name, fields=tuple(fields), required=dict(required or {}))
