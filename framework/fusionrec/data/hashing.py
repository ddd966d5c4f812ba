"""The hashing trick: ids mapped to a fixed number of buckets, without a vocabulary.

A categorical feature with ``hash_buckets: N`` stores no vocabulary. An id's string form (the one
vocabularies use: 7, 7.0 and "7" are one id) is encoded as UTF-8 and hashed with BLAKE2b with an
8-byte digest (``hashlib.blake2b(data, digest_size=8)``, i.e. BLAKE2b with output length 8, not a
truncated BLAKE2b-512); the digest read as a little-endian unsigned 64-bit integer, modulo N, is the
bucket, and the model id is the bucket + 2 (0 is padding; 1, the out-of-vocabulary id, is for
missing values). Python's ``hash`` would not do: it is salted per process, so every DataLoader
worker and every server would map an id elsewhere.

Only the standard library and numpy here, so a scoring service (:mod:`fusionrec.serving`) can
import this module without torch or pandas and encode ids exactly as training did.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

from fusionrec.features.base import OUT_OF_VOCABULARY, RESERVED


def hash_bucket(token: str, buckets: int) -> int:
    """The bucket, in ``[0, buckets)``, of one id's string form."""
    digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % buckets


def hashed_ids(tokens: Iterable[str | None], buckets: int) -> np.ndarray:
    """Model ids ``Int64[N]``: ``RESERVED + hash_bucket(token)``, or ``OUT_OF_VOCABULARY`` for None.

    Each distinct token is hashed once, so a column with repeated ids costs one dict lookup a row.
    """
    ids: dict[str | None, int] = {None: OUT_OF_VOCABULARY}
    out = []
    for token in tokens:
        id_ = ids.get(token)
        if id_ is None:
            id_ = ids[token] = RESERVED + hash_bucket(token, buckets)
        out.append(id_)
    return np.array(out, dtype=np.int64)
