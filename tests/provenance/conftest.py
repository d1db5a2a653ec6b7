"""The provenance tests' chain: Sample (Manual) x Factor (Lookup) -> Product -> Doubled."""

import pytest

from neuropipe.database import connect, import_datajoint
from neuropipe.worker import registry

dj = import_datajoint()


@pytest.fixture
def chain(settings):
    """Sample (Manual) x Factor (Lookup) -> Product -> Doubled, in a schema of the test's own."""
    connection = connect(settings)
    registry.activate(settings.schema_prefix, connection)
    schema = dj.Schema(settings.schema_prefix + "chain", connection=connection)

    @schema
    class Sample(dj.Manual):
        definition = """
        sample : int32
        ---
        value : float64
        """

    @schema
    class Factor(dj.Lookup):
        definition = """
        factor_id : int32
        ---
        factor : float64
        note = "" : varchar(64)
        """
        contents = [(1, 2.0, "double"), (2, 3.0, "triple")]

    @schema
    class Product(dj.Computed):
        definition = """
        -> Sample
        -> Factor
        ---
        product : float64
        """

        def make(self, key):
            value = (Sample & key).fetch1("value")
            self.insert1(dict(key, product=value * (Factor & key).fetch1("factor")))

    @schema
    class Doubled(dj.Computed):
        definition = """
        -> Product
        ---
        doubled : float64
        """

        def make(self, key):
            self.insert1(dict(key, doubled=2 * (Product & key).fetch1("product")))

    Sample.insert([(sample, float(sample)) for sample in range(3)])
    try:
        yield [Product, Doubled], Sample, Factor
    finally:
        schema.drop(prompt=False)
        registry.drop()
