"""The tensorflow_model_server flags the stand-in honours: model_servers/main.cc and server.h (names, types,
defaults)."""

from __future__ import annotations

import dataclasses

import grpc

from tfserving_stub.status import Status


Code = grpc.StatusCode


@dataclasses.dataclass
class Options:
    """The tensorflow_model_server flags this model honours (main.cc names and defaults)."""

    model_config_file: str = ""
    model_name: str = "default"
    model_base_path: str = ""
    model_config_file_poll_wait_seconds: int = 0  # 0: read once (main.cc: int32 flags)
    file_system_poll_wait_seconds: int = 1
    allow_version_labels_for_unavailable_models: bool = False
    # server.h: a failed load is retried max_num_load_retries times, load_retry_interval_micros apart.
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60 * 1000 * 1000
    enable_batching: bool = False
    batching_parameters_file: str = ""
    enable_serialization_as_tensor_content: bool = False
    # Test hooks, not TF Serving flags: how long a version takes to load (a big model), and a fault injected into
    # the next requests (as a proxy or an overloaded server would answer), see StubModelServer.inject.
    load_delay_s: float = 0.0
    batch_timeout_s: float = 0.002
    max_batch_size: int = 0  # from batching_parameters_file; 0 without batching

    FLAGS = {"model_config_file": str, "model_name": str, "model_base_path": str,
             "model_config_file_poll_wait_seconds": int, "file_system_poll_wait_seconds": int,
             "max_num_load_retries": int, "load_retry_interval_micros": int,
             "allow_version_labels_for_unavailable_models": bool,
             "enable_batching": bool, "batching_parameters_file": str,
             "enable_serialization_as_tensor_content": bool}

    @classmethod
    def from_args(cls, args: list[str], **overrides) -> "Options":
        """Options from a command line like the Deployment's (flags this model does not use are ignored)."""
        values = {}
        for arg in args:
            name, _, value = arg.lstrip("-").partition("=")
            kind = cls.FLAGS.get(name)
            if kind is bool:
                values[name] = value.lower() not in ("false", "0") if value else True
            elif kind is not None:
                try:
                    values[name] = kind(value)
                except ValueError:  # tensorflow::Flags::Parse refuses it and main() exits with the usage
                    raise Status(Code.INVALID_ARGUMENT, f"Couldn't interpret value {value} for flag {name}.") from None
        values.update(overrides)
        return cls(**values)
