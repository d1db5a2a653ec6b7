"""Blockwise computation: volumes larger than memory as ordinary DataJoint rows.

:mod:`.grid` cuts a volume into blocks (pure numpy).  :mod:`.tables` turns that into
DataJoint: a table of blocks per volume and block shape, Computed tables whose ``make()`` sees
one block plus its halo, and an output zarr array in the store that each block writes its own
region of.
"""
