"""The I/O-free heart of every client: encoding, decoding, error mapping, retry timing.

Nothing here opens a socket or sleeps. The four clients (``_http.py`` and
``_grpc.py``, each sync and async) only move the bytes these modules build and hand
back what they parse, so their behaviour cannot drift apart. The work is split by
role, and this module re-exports it all, where the clients import it from:

- ``_tensors.py``: tensors in (numpy, nested lists, scalars, torch) -> ``WireTensor``
  (V2 datatype, shape, little-endian row-major array); params; ``InferRequest``;
- ``_rest_codec.py`` / ``_grpc_codec.py``: ``InferRequest`` -> a V2 REST body (binary
  tensor extension or plain JSON) or a gRPC ``ModelInferRequest``
  (``raw_input_contents``); V2 REST / gRPC answers -> ``Outputs``;
- ``_outputs.py``: raw bytes -> numpy arrays, ``Outputs`` (keyed by output name);
- ``_metadata.py``: model, server and op-catalog metadata;
- ``_error_map.py``: HTTP statuses and gRPC codes -> the exception tree of ``errors.py``;
- ``_retry.py``: retry timing (``RetryPolicy``, ``Deadline``).
"""

from __future__ import annotations

from gradserve_client._error_map import ERROR_CODE_KEY as ERROR_CODE_KEY
from gradserve_client._error_map import REQUEST_ID_KEY as REQUEST_ID_KEY
from gradserve_client._error_map import grpc_error as grpc_error
from gradserve_client._error_map import http_error as http_error
from gradserve_client._grpc_codec import decode_grpc_infer as decode_grpc_infer
from gradserve_client._grpc_codec import grpc_infer_request as grpc_infer_request
from gradserve_client._grpc_codec import grpc_modules as grpc_modules
from gradserve_client._metadata import MODEL_VERSION as MODEL_VERSION
from gradserve_client._metadata import ModelMetadata as ModelMetadata
from gradserve_client._metadata import OpInfo as OpInfo
from gradserve_client._metadata import ServerMetadata as ServerMetadata
from gradserve_client._metadata import TensorMetadata as TensorMetadata
from gradserve_client._metadata import model_metadata_from_grpc as model_metadata_from_grpc
from gradserve_client._metadata import model_metadata_from_json as model_metadata_from_json
from gradserve_client._metadata import ops_from_catalog as ops_from_catalog
from gradserve_client._metadata import wanted_outputs as wanted_outputs
from gradserve_client._outputs import Outputs as Outputs
from gradserve_client._outputs import decode_tensor as decode_tensor
from gradserve_client._rest_codec import HttpRequest as HttpRequest
from gradserve_client._rest_codec import decode_http_infer as decode_http_infer
from gradserve_client._rest_codec import http_infer_request as http_infer_request
from gradserve_client._rest_codec import model_path as model_path
from gradserve_client._retry import NO_RETRY as NO_RETRY
from gradserve_client._retry import Deadline as Deadline
from gradserve_client._retry import RetryPolicy as RetryPolicy
from gradserve_client._retry import give_up as give_up
from gradserve_client._tensors import InferRequest as InferRequest
from gradserve_client._tensors import ParamValue as ParamValue
from gradserve_client._tensors import Scalar as Scalar
from gradserve_client._tensors import TensorLike as TensorLike
from gradserve_client._tensors import WireTensor as WireTensor
from gradserve_client._tensors import activation_inputs as activation_inputs
from gradserve_client._tensors import encode_inputs as encode_inputs
from gradserve_client._tensors import encode_params as encode_params
from gradserve_client._tensors import loss_inputs as loss_inputs
from gradserve_client._tensors import to_wire as to_wire
