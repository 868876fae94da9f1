"""mmfree.rtl: Amaranth components of the ternary accelerator and its top level.

Formats and LUT contents come from :mod:`mmfree.pymodel.numerics`; nothing here retypes a constant.
"""

import hashlib

from mmfree.config import RTL_SOURCES, source_digest

#: the digest of the RTL sources (:data:`mmfree.config.RTL_SOURCES`) as this process imported them: an edit on disk
#: after the import does not change the modules this process generates Verilog from, so it must not change the key
#: that Verilog is cached under (:func:`source_key`)
SOURCES_AT_IMPORT = source_digest(*RTL_SOURCES)


def source_key(extra: str, length: int = 16) -> str:
    """A cache key for what this process's RTL generates: ``extra`` (the build parameters, amaranth's version) and
    :data:`SOURCES_AT_IMPORT` (not the files on disk now). A hex string of ``length`` characters."""
    return hashlib.sha256(extra.encode() + b"\0" + SOURCES_AT_IMPORT.encode()).hexdigest()[:length]
