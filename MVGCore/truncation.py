"""Whether a NIfTI file holds all the voxel bytes its header promises, checked before it is read.

ITK's NIfTI reader fills what a cut-short file lacks with zeros and says nothing: a ``.nii.gz``
cut at 60 % reads as a volume whose last slices are black, and every task would go on with it.
Its NRRD and MetaImage readers refuse such a file already, so NIfTI is the one format checked
here. The same check runs on every file MVG writes in NIfTI, because ITK's NIfTI writer reports a
full disk only on stderr ("NWAD: wrote only 0 of ... bytes") and would otherwise leave a short
file to be published as the result.

The header is parsed with :mod:`struct` (NIfTI-1 and NIfTI-2, either byte order), so no NIfTI
library is needed. For a gzip file the last four bytes (the uncompressed size, modulo 2**32) are
compared first; only when they disagree (a cut file, or one made of several gzip members, as
bgzip writes) is the stream decompressed to count its bytes.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
_HEADER = {348: (b"n+1\0", 352), 540: (b"n+2\0", 544)}
"""sizeof_hdr -> (magic of a single-file NIfTI, the least voxel offset such a file can have)."""


def check_complete(path: str | Path, name: str | Path | None = None, written: bool = False) -> None:
    """Refuse (ValueError naming ``name`` or ``path``) a ``.nii``/``.nii.gz`` file shorter than its
    header promises; other formats and files that are not single-file NIfTI are left to ITK.

    ``written``: the file was just written as NIfTI, so a header that cannot be found is refused
    too (a writer that ran out of space can leave an empty file).
    """
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return
    label = name if name is not None else path
    with open(path, "rb") as handle:
        compressed = handle.read(2) == _GZIP_MAGIC
    if compressed:
        have, promised, cut = _gzip_sizes(path, label)
        if promised is None and cut:
            raise ValueError(
                f"{label} is truncated: its gzip stream ends after {have} bytes, inside the header"
            )
    else:
        with open(path, "rb") as handle:
            head = handle.read(max(_HEADER))
        have, promised = os.path.getsize(path), _promised(head, label)
    if promised is None:
        if written:
            raise ValueError(f"{label} is truncated: {have} bytes, no complete NIfTI header")
        return
    header, total = promised
    if have < total:
        hint = "" if written else "; the file was cut short (an interrupted copy or download?)"
        raise ValueError(
            f"{label} is truncated: {max(have - header, 0)} bytes of voxel data, header promises "
            f"{total - header}{hint}"
        )


def _promised(head: bytes, label: object) -> tuple[int, int] | None:
    """(voxel offset, total bytes) a single-file NIfTI header promises; None if ``head`` is not one."""
    for order in "<>":
        if len(head) < 4:
            return None
        size = struct.unpack(order + "i", head[:4])[0]
        if size not in _HEADER:
            continue
        magic, least_offset = _HEADER[size]
        if len(head) < size:
            raise ValueError(
                f"{label} is truncated: {len(head)} bytes, but a NIfTI header alone is {size} bytes"
            )
        if size == 348:
            if head[344:348] != magic:
                return None  # an .hdr/.img pair's header or Analyze 7.5: not a single file
            dims = struct.unpack(order + "8h", head[40:56])
            bitpix = struct.unpack(order + "h", head[72:74])[0]
            offset = struct.unpack(order + "f", head[108:112])[0]
        else:
            if head[4:8] != magic:
                return None
            bitpix = struct.unpack(order + "h", head[14:16])[0]
            dims = struct.unpack(order + "8q", head[16:80])
            offset = struct.unpack(order + "q", head[168:176])[0]
        rank = dims[0]
        if not (1 <= rank <= 7 and bitpix > 0 and bitpix % 8 == 0 and math.isfinite(offset)):
            return None  # an unusual header: ITK judges it
        if any(d < 1 for d in dims[1 : rank + 1]):
            return None
        start = max(int(offset), least_offset)
        return start, start + math.prod(dims[1 : rank + 1]) * (bitpix // 8)
    return None


def _gzip_sizes(path: Path, label: object) -> tuple[int, tuple[int, int] | None, bool]:
    """(bytes the gzip stream yields, what its NIfTI header promises, whether the stream was cut),
    decompressing only as far as needed: to the header, then to the promised end unless the gzip
    trailer already agrees."""
    with open(path, "rb") as handle:
        handle.seek(max(os.path.getsize(path) - 4, 0))
        trailer_size = int.from_bytes(handle.read(4), "little")
        handle.seek(0)
        produced, head, promised = 0, b"", None
        decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16)
        data = handle.read(_CHUNK)
        while data:
            try:
                out = decompressor.decompress(data)
            except zlib.error as error:
                raise ValueError(
                    f"{label} is damaged: its gzip data cannot be decompressed ({error})"
                ) from None
            produced += len(out)
            if promised is None and len(head) < max(_HEADER):
                head += out[: max(_HEADER) - len(head)]
                if len(head) == max(_HEADER):
                    promised = _promised(head, label)
                    if promised is None:
                        return produced, None, False  # not a single-file NIfTI: ITK judges it
                    if trailer_size == promised[1] % (1 << 32):
                        return promised[1], promised, False  # complete, by its own trailer
            if promised is not None and produced >= promised[1]:
                return produced, promised, False
            data = decompressor.unused_data if decompressor.eof else b""
            if len(data) < 2:
                data += handle.read(_CHUNK)
            if decompressor.eof:  # a gzip member ended; another may follow (bgzip, pigz -i)
                if data[:2] != _GZIP_MAGIC:
                    break  # the end, or trailing padding as some tools add
                decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16)
    cut = not decompressor.eof
    return produced, promised if promised is not None else _promised(head, label), cut
