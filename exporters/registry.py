"""The table of export formats and the options each supports, validated before work starts."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExportFormat:
    name: str
    suffix: str
    precisions: tuple[str, ...]
    extra: str | None  # pip extra that provides its dependencies
    description: str


EXPORT_FORMATS: dict[str, ExportFormat] = {
    f.name: f for f in (
        ExportFormat("onnx", ".onnx", ("fp32",), None,
                     "one graph per variant and per piece, all sharing graphs/weights.bin"),
        ExportFormat("tflite", ".tflite", ("fp32", "fp16", "int8"), "tflite",
                     "builtin-ops TFLite files per variant (fp32, fp16, dynamic-range int8)"),
    )
}


def get_format(name: str) -> ExportFormat:
    try:
        return EXPORT_FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown export format '{name}'; known: {sorted(EXPORT_FORMATS)}") \
            from None
