"""Format specs: IEEE-style floats, integers, HiFloat8, and (later) block formats."""

from floatlab.formats.base import Overflow, ScalarFormat
from floatlab.formats.block import BlockFormat, ScaleRule, block_format
from floatlab.formats.finfo import FInfo, finfo
from floatlab.formats.floating import FloatFormat, NanStyle
from floatlab.formats.hifloat8 import HiF8Format
from floatlab.formats.integer import IntFormat
from floatlab.formats.registry import get_format, list_formats, register_format

__all__ = ["BlockFormat", "ScaleRule", "block_format", "Overflow", "ScalarFormat", "FInfo", "finfo", "FloatFormat", "NanStyle", "HiF8Format",
           "IntFormat", "get_format", "list_formats", "register_format"]
