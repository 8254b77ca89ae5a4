"""Export floatlab-quantized models to the checkpoint formats serving engines read.

* :mod:`floatlab.export.compressed_tensors`: the ``compressed-tensors`` format (llm-compressor's,
  served by vLLM), written by the ``compressed-tensors`` package itself.

Example (it needs a ``floatlab ptq`` output folder, so it is not run as a doctest)::

    from floatlab.export import export_folder
    export_folder("q-int4", "q-int4-ct")                          # a `floatlab ptq --out q-int4` folder
"""

from floatlab.export.compressed_tensors import ExportError, check_exportable, export_folder, export_model, scheme_args

__all__ = ["ExportError", "check_exportable", "export_folder", "export_model", "scheme_args"]
