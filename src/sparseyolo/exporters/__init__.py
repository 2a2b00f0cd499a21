"""ONNX export: FP32 (BN folded), QDQ int8 and QLinearConv (QOperator) forms, post-training
quantization, packed sparse weights, size on disk."""

from sparseyolo.exporters.onnx import export_onnx, fold_batchnorm, model_metadata
from sparseyolo.exporters.packed import pack_sparse_file, pack_sparse_weights, unpack_sparse_weights
from sparseyolo.exporters.ptq import calibration_loader, ptq_config, quantize_post_training
from sparseyolo.exporters.qlinear import convert_to_qlinear, export_qlinear, make_uint8_input
from sparseyolo.exporters.size import FileSize, file_size, gzip_size, size_table

__all__ = [
    "export_onnx",
    "fold_batchnorm",
    "model_metadata",
    "convert_to_qlinear",
    "export_qlinear",
    "make_uint8_input",
    "quantize_post_training",
    "calibration_loader",
    "ptq_config",
    "pack_sparse_file",
    "pack_sparse_weights",
    "unpack_sparse_weights",
    "FileSize",
    "file_size",
    "gzip_size",
    "size_table",
]
