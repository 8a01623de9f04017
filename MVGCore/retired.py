"""Settings that once existed and were retired: old files that name them keep loading.

Published weights carry their config in a JSON sidecar, and run folders keep the training config
they started with. When a setting is retired (it served a probe that did not pay, see
``research/README.md``), such a file may still name it. Where it holds the value that is now the
only behaviour, the key is dropped with a logged note, so the file loads and means what it meant;
any other value is refused with a one-line error, because the file asks for something that no
longer exists.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)


def drop_retired(data: Mapping[str, Any], retired: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``data`` without the ``retired`` keys (key -> the value that is now the behaviour).

    ``source`` names the file or section in the note and the error.
    """
    kept = dict(data)
    for key, surviving in retired.items():
        if key not in kept:
            continue
        value = kept.pop(key)
        if value != surviving:
            raise ValueError(
                f"{source}: {key}={value!r} was retired (only {key}={surviving!r} remains); "
                "remove the key, or use a release that still has it"
            )
        log.info("%s: dropped the retired setting %s=%r (it is the only behaviour now)", source, key, value)
    return kept
