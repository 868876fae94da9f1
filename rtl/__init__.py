"""mmfree.rtl: Amaranth components of the ternary accelerator and its top level.

Formats and LUT contents come from :mod:`mmfree.pymodel.numerics`; nothing here retypes a constant.
"""
