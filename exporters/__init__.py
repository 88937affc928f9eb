"""snrt exporters: turn a Family's variants into bundle artifacts (ONNX graphs, TFLite files).

Data flows one way: snrt.family -> snrt.variants -> exporters -> snrt.bundle. Nothing in `snrt`
imports this package, so the run time never needs an exporter's dependencies.
"""

from .registry import EXPORT_FORMATS, ExportFormat, get_format

__all__ = ["EXPORT_FORMATS", "ExportFormat", "get_format"]
