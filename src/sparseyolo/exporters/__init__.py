"""ONNX export: FP32 (BN folded), QDQ int8 and QLinearConv (QOperator) forms, packed sparse
weights, size on disk."""

from sparseyolo.export.onnx import export_onnx, fold_batchnorm, model_metadata
from sparseyolo.export.packed import pack_sparse_file, pack_sparse_weights, unpack_sparse_weights
from sparseyolo.export.qlinear import convert_to_qlinear, export_qlinear, make_uint8_input
from sparseyolo.export.size import FileSize, file_size, gzip_size, size_table

__all__ = [
    "export_onnx",
    "fold_batchnorm",
    "model_metadata",
    "convert_to_qlinear",
    "export_qlinear",
    "make_uint8_input",
    "pack_sparse_file",
    "pack_sparse_weights",
    "unpack_sparse_weights",
    "FileSize",
    "file_size",
    "gzip_size",
    "size_table",
]
